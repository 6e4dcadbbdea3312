//! The pg_s2t gateway. Only the skeleton exists so far; the REST API, auth
//! and WebSocket sessions arrive with the gateway issue.

/// HTTP status for an extension SQLSTATE; one mapping for the whole service.
pub fn status_for_sqlstate(sqlstate: &str) -> u16 {
    s2t_core::sqlstate::http_status(sqlstate).unwrap_or(500)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_codes_are_server_errors() {
        assert_eq!(super::status_for_sqlstate("XX000"), 500);
        assert_eq!(super::status_for_sqlstate("S2Q01"), 429);
    }
}
