//! The OpenAPI 3.1 description of the gateway, served at `/openapi.json`,
//! and a plain HTML page of it at `/docs` (no scripts from elsewhere).

use serde_json::{json, Map, Value};

fn problem() -> Value {
    json!({"description": "Problem details", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}})
}

/// One operation: summary, tag, whether it needs a bearer token, extra
/// fields (parameters, requestBody) and its answers besides the errors.
fn op(summary: &str, tag: &str, secured: bool, extra: Value, responses: Value) -> Value {
    let mut o = Map::new();
    o.insert("summary".into(), json!(summary));
    o.insert("tags".into(), json!([tag]));
    if !secured {
        o.insert("security".into(), json!([]));
    }
    if let Value::Object(extra) = extra {
        o.extend(extra);
    }
    let mut r = responses.as_object().cloned().unwrap_or_default();
    for code in ["400", "401", "404", "422", "429", "500"] {
        r.entry(code.to_string()).or_insert_with(problem);
    }
    o.insert("responses".into(), Value::Object(r));
    Value::Object(o)
}

/// The admin surface and the billing webhook (kept apart: one `json!` for
/// every path exceeds the macro's recursion limit).
fn admin_paths() -> Value {
    let obj = json!({"type": "object"});
    json!({
        "/admin/users": {"get": op("Admins: users with plan and usage", "admin", true,
            json!({"parameters": [
                {"name": "search", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}]}),
            json!({"200": ok_json("users", obj.clone()), "403": problem()}))},
        "/admin/users/{id}": {"patch": op("Admins: change a user's status or plan, or reset their usage", "admin", true,
            json!({"parameters": [id_param()], "requestBody": body(json!({"type": "object", "additionalProperties": false, "properties": {
                "status": {"type": "string", "enum": ["active", "disabled"]}, "plan_code": {"type": "string"},
                "reset_usage": {"type": "boolean"}}}))}),
            json!({"200": ok_json("changed", obj.clone()), "403": problem(), "409": problem()}))},
        "/admin/plans": {"get": op("Admins: the plans", "admin", true, json!({}),
            json!({"200": ok_json("plans", obj.clone()), "403": problem()}))},
        "/admin/plans/{code}": {"put": op("Admins: create or update a plan", "admin", true,
            json!({"parameters": [{"name": "code", "in": "path", "required": true, "schema": {"type": "string"}}],
                   "requestBody": body(json!({"type": "object", "additionalProperties": false,
                       "required": ["name", "monthly_minutes", "monthly_usage_limit"], "properties": {
                       "name": {"type": "string"}, "description": {"type": "string"}, "plan_type": {"type": "string"},
                       "plan_cost": {"type": "integer"}, "plan_discount": {"type": "integer"},
                       "monthly_minutes": {"type": "integer"}, "monthly_usage_limit": {"type": "integer"},
                       "monthly_questions": {"type": "integer", "minimum": 0, "description": "questions a month (POST /rag/ask); omitted keeps the plan's (100 for a new plan)"}}}))}),
            json!({"200": ok_json("saved", obj.clone()), "403": problem()}))},
        "/billing/webhook": {"post": op("Billing: apply a signed plan change (header s2t-signature: t=<unix>,v1=<hex HMAC-SHA256 of t.body>)", "admin", false,
            json!({"requestBody": body(json!({"type": "object", "required": ["event_id", "user_id", "plan_code"], "properties": {
                "event_id": {"type": "string"}, "user_id": {"type": "string", "format": "uuid"}, "plan_code": {"type": "string"}}}))}),
            json!({"200": ok_json("applied or duplicate", obj.clone()), "409": problem(), "413": problem()}))}
    })
}

pub fn document() -> Value {
    let obj = json!({"type": "object"});
    let recording = json!({"$ref": "#/components/schemas/Recording"});
    let multipart = |fields: Value| {
        json!({"required": true, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"], "properties": fields}}}})
    };
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "pg_s2t gateway", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Speech to text on PostgreSQL. Errors are RFC 9457 problem details."},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": op("The process is up", "operations", false, json!({}), json!({"200": ok_json("up", obj.clone())}))},
            "/readyz": {"get": op("The database answers and the extension has the expected version", "operations", false, json!({}),
                json!({"200": ok_json("ready", obj.clone()), "503": problem()}))},
            "/metrics": {"get": op("Prometheus metrics", "operations", false, json!({}),
                json!({"200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}))},
            "/auth/register": {"post": op("Create an account on the FREE plan", "auth", false,
                json!({"requestBody": body(json!({"type": "object", "required": ["email", "user_name", "password"],
                    "properties": {"email": {"type": "string"}, "user_name": {"type": "string"},
                                   "password": {"type": "string", "minLength": 8, "maxLength": 256},
                                   "name": {"type": ["string", "null"]}}}))}),
                json!({"201": ok_json("created", obj.clone()), "409": problem()}))},
            "/auth/login": {"post": op("Exchange an e-mail or user name and password for tokens", "auth", false,
                json!({"requestBody": body(json!({"type": "object", "required": ["login", "password"],
                    "properties": {"login": {"type": "string"}, "password": {"type": "string"}}}))}),
                json!({"200": ok_json("tokens", json!({"$ref": "#/components/schemas/Tokens"})), "403": problem()}))},
            "/auth/refresh": {"post": op("Rotate a refresh token", "auth", false,
                json!({"requestBody": body(json!({"type": "object", "required": ["refresh_token"],
                    "properties": {"refresh_token": {"type": "string"}}}))}),
                json!({"200": ok_json("tokens", json!({"$ref": "#/components/schemas/Tokens"})), "403": problem()}))},
            "/auth/logout": {"post": op("Revoke a refresh token's session", "auth", false,
                json!({"requestBody": body(json!({"type": "object", "properties": {"refresh_token": {"type": "string"}}}))}),
                json!({"204": {"description": "revoked"}}))},
            "/me": {
                "get": op("The signed-in user", "users", true, json!({}), json!({"200": ok_json("profile", obj.clone())})),
                "patch": op("Change the display name", "users", true,
                    json!({"requestBody": body(json!({"type": "object", "properties": {"name": {"type": ["string", "null"]}}}))}),
                    json!({"200": ok_json("profile", obj.clone())}))
            },
            "/me/avatar": {
                "get": op("The avatar image", "users", true, json!({}),
                    json!({"200": {"description": "image", "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}})),
                "put": op("Upload an avatar (PNG, JPEG, WebP or GIF, at most 2 MiB)", "users", true,
                    json!({"requestBody": {"required": true, "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}}),
                    json!({"200": ok_json("profile", obj.clone()), "413": problem(), "415": problem()}))
            },
            "/me/stats": {"get": op("Usage, quota percentages and reset time", "users", true, json!({}), json!({"200": ok_json("stats", obj.clone())}))},
            "/me/api-keys": {
                "post": op("Create an API key (shown once) to use as a bearer token", "users", true,
                    json!({"requestBody": body(json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100}}}))}),
                    json!({"201": ok_json("the key", obj.clone()), "409": problem()})),
                "get": op("The active API keys (never the keys themselves)", "users", true, json!({}), json!({"200": ok_json("keys", obj.clone())}))
            },
            "/me/api-keys/{id}": {"delete": op("Revoke an API key", "users", true, json!({"parameters": [id_param()]}),
                json!({"204": {"description": "revoked"}}))},
            "/me/plan": {"post": op("Change plan", "users", true,
                json!({"requestBody": body(json!({"type": "object", "required": ["plan_code"], "properties": {"plan_code": {"type": "string"}}}))}),
                json!({"200": ok_json("changed", obj.clone()), "409": problem()}))},
            "/plans": {"get": op("The plans", "users", false, json!({}), json!({"200": ok_json("plans", obj.clone())}))},
            "/recordings": {
                "post": op("Upload audio for transcription (202; over quota 429)", "recordings", true,
                    json!({"requestBody": multipart(json!({"file": {"type": "string", "format": "binary"}, "language": {"type": "string"}}))}),
                    json!({"202": ok_json("queued", obj.clone()), "413": problem()})),
                "get": op("The user's recordings, newest first", "recordings", true,
                    json!({"parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["processing", "done", "failed"]}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}]}),
                    json!({"200": ok_json("a page", obj.clone())}))
            },
            "/recordings/{id}": {
                "get": op("A recording with its segments", "recordings", true, json!({"parameters": [id_param()]}),
                    json!({"200": ok_json("recording", recording)})),
                "delete": op("Delete a recording", "recordings", true, json!({"parameters": [id_param()]}),
                    json!({"204": {"description": "deleted"}}))
            },
            "/recordings/{id}/events": {"get": op("Server-Sent Events with status and progress until done or failed", "recordings", true,
                json!({"parameters": [id_param()]}),
                json!({"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}))},
            "/recordings/{id}/{file}": {"get": op("transcript.txt, transcript.srt, transcript.vtt, transcript.json, or audio (with Range)", "recordings", true,
                json!({"parameters": [id_param(), {"name": "file", "in": "path", "required": true,
                    "schema": {"type": "string", "enum": ["transcript.txt", "transcript.srt", "transcript.vtt", "transcript.json", "audio"]}}]}),
                json!({"200": {"description": "the file"}, "206": {"description": "a range of the audio"},
                       "409": problem(), "416": {"description": "range outside the audio"}}))},
            "/search/semantic": {"get": op("Hybrid search of the user's transcripts (meaning and words, fused): the best passages with times, highlights and a link to play each", "search", true,
                json!({"parameters": [
                    {"name": "q", "in": "query", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 2000}},
                    {"name": "k", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}},
                    {"name": "recording_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "language", "in": "query", "schema": {"type": "string", "pattern": "^[a-z]{2,3}$"}}]}),
                json!({"200": ok_json("the hits, best first", search_answer()),
                       "404": problem(), "422": problem()}))},
            "/ws/ticket": {"post": op("A one-time ticket (30 s) for a browser's realtime WebSocket: GET /ws/s2t?ticket=...", "realtime", true,
                json!({}),
                json!({"200": ok_json("the ticket", json!({"type": "object", "required": ["ticket", "expires_in", "url"], "properties": {
                    "ticket": {"type": "string"}, "expires_in": {"type": "integer"}, "url": {"type": "string"}}})),
                       "429": problem()}))},
            "/v1/audio/transcriptions": {"post": op("OpenAI-compatible synchronous transcription", "openai", true,
                json!({"requestBody": multipart(json!({
                    "file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                    "language": {"type": "string"}, "prompt": {"type": "string"},
                    "response_format": {"type": "string", "enum": ["json", "text", "srt", "vtt", "verbose_json"]}}))}),
                json!({"200": {"description": "the transcript in the requested format"}, "413": problem(), "504": problem()}))}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"}, "errors": {"type": "object", "additionalProperties": {"type": "string"}},
                    "code": {"type": "string"}}},
                "Tokens": {"type": "object", "required": ["access_token", "refresh_token", "token_type", "expires_in"], "properties": {
                    "access_token": {"type": "string"}, "refresh_token": {"type": "string"},
                    "token_type": {"type": "string"}, "expires_in": {"type": "integer"}}},
                "Recording": {"type": "object", "properties": {
                    "id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
                    "language": {"type": ["string", "null"]}, "duration_ms": {"type": ["integer", "null"]},
                    "failure_reason": {"type": ["string", "null"]}, "progress": {"type": ["number", "null"]},
                    "segments": {"type": "array", "items": {"type": "object"}}}}
            }
        }
    });
    if let (Some(paths), Value::Object(admin)) = (doc["paths"].as_object_mut(), admin_paths()) {
        paths.extend(admin);
    }
    if let (Some(paths), Value::Object(ask)) = (doc["paths"].as_object_mut(), ask_paths()) {
        paths.extend(ask);
    }
    doc["components"]["schemas"]["Answer"] = answer_schema();
    doc
}

/// `POST /rag/ask` and `GET /rag/history`.
fn ask_paths() -> Value {
    let question = json!({"type": "object", "required": ["question"], "properties": {
        "question": {"type": "string", "minLength": 1, "maxLength": 2000},
        "recording_id": {"type": "string", "format": "uuid"},
        "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"},
        "k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 6},
        "lang": {"type": "string", "enum": ["en", "vi"]},
        "mode": {"type": "string", "enum": ["auto", "extractive", "generative"], "default": "auto",
                 "description": "auto: generative when a chat model is configured (S2T_LLM_URL), else extractive"}}});
    let answer = json!({"$ref": "#/components/schemas/Answer"});
    let page = json!({"type": "object", "required": ["answers", "next_cursor"], "properties": {
        "answers": {"type": "array", "items": answer}, "next_cursor": {"type": ["string", "null"]}}});
    json!({
            "/rag/ask": {"post": op("An answer to a question from the user's own transcripts, every claim cited (passage, time, highlighted sentence); counted against the plan's monthly questions. ?stream=true or Accept: text/event-stream sends events citations, answer (text pieces; the model's tokens in generative mode), error or fallback (when a generated answer is replaced by the extractive one) and done (the checked answer)", "ask", true,
                json!({"parameters": [{"name": "stream", "in": "query", "schema": {"type": "boolean"}}],
                       "requestBody": body(question)}),
                json!({"200": {"description": "the answer (or an event stream)", "content": {
                    "application/json": {"schema": answer},
                    "text/event-stream": {"schema": {"type": "string"}}}},
                       "404": problem(), "422": problem(), "429": problem()}))},
            "/rag/history": {"get": op("The user's earlier answers, newest first", "ask", true,
                json!({"parameters": [{"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}]}),
                json!({"200": ok_json("a page of answers", page)}))}
    })
}

/// An answer of `POST /rag/ask` (and of the history).
fn answer_schema() -> Value {
    let citation = json!({"type": "object", "required": ["n", "chunk_id", "recording_id", "title", "start_ms", "end_ms", "text", "highlight", "link"], "properties": {
        "n": {"type": "integer", "description": "the marker [n] in the answer"},
        "chunk_id": {"type": "string", "format": "uuid"}, "recording_id": {"type": "string", "format": "uuid"},
        "title": {"type": "string"},
        "start_ms": {"type": "integer", "description": "when the highlighted sentence is spoken"}, "end_ms": {"type": "integer"},
        "passage_start_ms": {"type": "integer"}, "passage_end_ms": {"type": "integer"},
        "text": {"type": "string", "description": "the quoted passage"},
        "highlight": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                      "description": "[start, end) character offsets of the answering sentence in text"},
        "link": {"type": "string"}}});
    json!({"type": "object", "required": ["id", "question", "answer", "citations", "mode", "found", "created_at"], "properties": {
        "id": {"type": "string", "format": "uuid"}, "question": {"type": "string"},
        "answer": {"type": "string", "description": "text with markers [n]; empty when found is false"},
        "citations": {"type": "array", "items": citation},
        "mode": {"type": "string", "enum": ["extractive", "generative"]}, "model": {"type": ["string", "null"]},
        "found": {"type": "boolean"},
        "fallback": {"type": ["string", "null"], "description": "why a generated answer was replaced by the extractive one"},
        "flagged": {"type": "array", "description": "sentences of a generated answer that their cited passages do not support",
                    "items": {"type": "object", "properties": {"sentence": {"type": "string"}, "support": {"type": "number"}}}},
        "removed_markers": {"type": "array", "items": {"type": "integer"}, "description": "markers of a generated answer that named no passage (removed)"},
        "scope": {"type": "object"}, "created_at": {"type": "string", "format": "date-time"}}})
}

/// The docs page: every operation with its method, path and summary.
pub fn html(doc: &Value) -> String {
    let mut rows = String::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, ops) in paths {
            for (method, op) in ops.as_object().into_iter().flatten() {
                let summary = op["summary"].as_str().unwrap_or_default();
                let auth = if op.get("security").is_some() {
                    ""
                } else {
                    "bearer token"
                };
                rows.push_str(&format!(
                    "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
                    method.to_uppercase(),
                    escape(path),
                    escape(summary),
                    auth
                ));
            }
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pg_s2t API</title>\
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{padding:.2em .6em;border-bottom:1px solid #ddd}}</style>\
</head><body><h1>pg_s2t API {}</h1><p>The machine-readable description is <a href=\"/openapi.json\">/openapi.json</a>. \
Errors are <code>application/problem+json</code>.</p><table>\n{rows}</table></body></html>\n",
        escape(doc["info"]["version"].as_str().unwrap_or_default())
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The body of a `GET /search/semantic` answer.
fn search_answer() -> Value {
    let hit = json!({"type": "object", "required": ["chunk_id", "recording_id", "start_ms", "end_ms", "text", "score", "highlights", "link"], "properties": {
        "chunk_id": {"type": "string", "format": "uuid"}, "recording_id": {"type": "string", "format": "uuid"},
        "title": {"type": ["string", "null"]}, "recording_created_at": {"type": "string", "format": "date-time"},
        "start_ms": {"type": "integer"}, "end_ms": {"type": "integer"}, "text": {"type": "string"}, "score": {"type": "number"},
        "dense_rank": {"type": ["integer", "null"]}, "lexical_rank": {"type": ["integer", "null"]},
        "highlights": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
        "link": {"type": "string"}}});
    json!({"type": "object", "required": ["query", "mode", "model", "hits"], "properties": {
        "query": {"type": "string"}, "mode": {"type": "string", "enum": ["hybrid", "lexical"]}, "model": {"type": "string"},
        "hits": {"type": "array", "items": hit}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_its_errors_and_the_page_lists_it() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/audio/transcriptions"));
        let mut n = 0;
        for ops in paths.values() {
            for op in ops.as_object().unwrap().values() {
                assert!(op["responses"]["500"].is_object());
                n += 1;
            }
        }
        let page = html(&doc);
        assert_eq!(page.matches("<tr>").count(), n);
        assert!(page.contains("/recordings/{id}/events"));
    }
}
