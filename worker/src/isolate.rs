//! Each transcription runs in a child process (`s2t-worker transcribe-job`)
//! that the job's slot supervises, so that a crash which ends a process (a
//! whisper.cpp `GGML_ASSERT` abort, an allocation failure, the OOM killer)
//! ends only that job's attempt: the slot sees the child die, reports the
//! attempt as failed (retryable; after `max_attempts` the recording fails
//! with the reason) and goes on, and the other slots' jobs never notice.
//!
//! The parent keeps everything that talks to the database (the claim, the
//! lease keeper, reading the audio, completion); the child gets the audio
//! bytes on stdin and the settings as arguments, loads the one model the
//! job needs, decodes, resamples and transcribes, and answers with JSON
//! lines on stdout: progress, then one result. Cancelling (a lost lease, a
//! shutdown past its grace) kills the child, which stops the decode at once.

use crate::asr::{Engine, EngineError, ModelPaths, TranscribeOptions};
use crate::audio::{self, AudioError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::PathBuf;

/// What a job's child needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildJob {
    pub model: PathBuf,
    pub language: String,
    pub threads: i32,
    pub beam_size: i32,
    pub fit_audio_ctx: bool,
    pub multilingual: bool,
    pub prompt: Option<String>,
    pub max_audio_secs: u64,
    pub max_ms: Option<i32>,
    pub extension: Option<String>,
}

impl ChildJob {
    /// The `transcribe-job` arguments that describe this job.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "transcribe-job".to_string(),
            "--model".into(),
            self.model.display().to_string(),
            "--language".into(),
            self.language.clone(),
            "--threads".into(),
            self.threads.to_string(),
            "--beam-size".into(),
            self.beam_size.to_string(),
            "--fit-audio-ctx".into(),
            self.fit_audio_ctx.to_string(),
            "--max-audio-secs".into(),
            self.max_audio_secs.to_string(),
        ];
        if self.multilingual {
            a.push("--multilingual".into());
        }
        if let Some(p) = &self.prompt {
            a.extend(["--prompt".into(), p.clone()]);
        }
        if let Some(m) = self.max_ms {
            a.extend(["--max-ms".into(), m.to_string()]);
        }
        if let Some(e) = &self.extension {
            a.extend(["--extension".into(), e.clone()]);
        }
        a
    }
}

/// The one model file a job uses: the English model for `en` (unless the
/// client asked for a multilingual model), the multilingual one otherwise.
pub fn model_for(paths: &ModelPaths, language: &str, multilingual: bool) -> Option<PathBuf> {
    if language == "en" && !multilingual {
        paths.english.clone().or_else(|| paths.multilingual.clone())
    } else {
        paths.multilingual.clone()
    }
}

/// One line from the child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ChildMessage {
    /// Whisper's progress, 0..1.
    Progress(f32),
    /// The audio is decoded and this long (before any cut): sent first, so
    /// the parent can settle the job's reservation while Whisper runs.
    Decoded { audio_ms: i32 },
    Done {
        /// The transcribed length (cut to the allowance if need be).
        duration_ms: i32,
        notice: Option<String>,
        language: Option<String>,
        segments: serde_json::Value,
        segment_count: usize,
    },
    /// A failure; `permanent` ones (bad audio, no model) are not retried.
    Failed { permanent: bool, reason: String },
}

fn describe_audio_error(e: &AudioError) -> String {
    match e {
        AudioError::Empty | AudioError::NoSamples => format!("{e}: nothing to transcribe"),
        _ => e.to_string(),
    }
}

fn emit(message: &ChildMessage) {
    let mut out = std::io::stdout().lock();
    // A parent that went away has no use for the line; nothing to do.
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(message).expect("child messages serialise")
    );
    let _ = out.flush();
}

/// The child's side: read the audio from stdin and answer on stdout.
pub fn run_child(job: &ChildJob) {
    emit(&transcribe_stdin(job));
}

fn transcribe_stdin(job: &ChildJob) -> ChildMessage {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        return ChildMessage::Failed {
            permanent: false,
            reason: format!("reading the audio from the worker failed: {e}"),
        };
    }
    let mut decoded = match audio::decode(bytes, job.extension.as_deref(), job.max_audio_secs) {
        Ok(d) => d,
        // Bad input never gets better: no retries.
        Err(e) => {
            return ChildMessage::Failed {
                permanent: true,
                reason: describe_audio_error(&e),
            }
        }
    };
    let mut duration_ms = i32::try_from(decoded.duration_ms).unwrap_or(i32::MAX);
    emit(&ChildMessage::Decoded {
        audio_ms: duration_ms,
    });
    let mut notice = None;
    if let Some((keep, ms, text)) =
        crate::runner::cut_to_allowance(decoded.samples.len(), decoded.duration_ms, job.max_ms)
    {
        decoded.samples.truncate(keep);
        duration_ms = i32::try_from(ms).unwrap_or(i32::MAX);
        notice = Some(text);
    }
    let paths = if job.language == "en" && !job.multilingual {
        ModelPaths {
            english: Some(job.model.clone()),
            multilingual: None,
        }
    } else {
        ModelPaths {
            english: None,
            multilingual: Some(job.model.clone()),
        }
    };
    let engine = match Engine::load(&paths) {
        Ok(e) => e,
        Err(e) => {
            return ChildMessage::Failed {
                permanent: false,
                reason: format!("loading the model failed: {e}"),
            }
        }
    };
    let options = TranscribeOptions {
        language: job.language.clone(),
        threads: job.threads,
        beam_size: job.beam_size,
        cancel: None,
        fit_audio_ctx: job.fit_audio_ctx,
        multilingual: job.multilingual,
        prompt: job.prompt.clone(),
    };
    match engine.transcribe(&decoded.samples, &options, |f| {
        emit(&ChildMessage::Progress(f))
    }) {
        Ok(t) => ChildMessage::Done {
            duration_ms,
            notice,
            language: t.language.clone(),
            segment_count: t.segments.len(),
            segments: serde_json::to_value(&t.segments).expect("segments serialise"),
        },
        Err(e @ EngineError::NoModel(_)) => ChildMessage::Failed {
            permanent: true,
            reason: format!("transcription failed: {e}"),
        },
        Err(e) => ChildMessage::Failed {
            permanent: false,
            reason: format!("transcription failed: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_picks_one_model_and_round_trips_its_arguments() {
        let paths = ModelPaths {
            english: Some("en.bin".into()),
            multilingual: Some("base.bin".into()),
        };
        assert_eq!(model_for(&paths, "en", false), Some("en.bin".into()));
        assert_eq!(model_for(&paths, "en", true), Some("base.bin".into()));
        assert_eq!(model_for(&paths, "vi", false), Some("base.bin".into()));
        let only_en = ModelPaths {
            english: Some("en.bin".into()),
            multilingual: None,
        };
        assert_eq!(model_for(&only_en, "auto", false), None);
        let job = ChildJob {
            model: "m.bin".into(),
            language: "en".into(),
            threads: 1,
            beam_size: 5,
            fit_audio_ctx: true,
            multilingual: false,
            prompt: Some("Postgres".into()),
            max_audio_secs: 60,
            max_ms: Some(1500),
            extension: Some("wav".into()),
        };
        let args = job.args();
        assert_eq!(args[0], "transcribe-job");
        assert!(args.windows(2).any(|w| w == ["--max-ms", "1500"]));
        assert!(args.windows(2).any(|w| w == ["--prompt", "Postgres"]));
        let line = serde_json::to_string(&ChildMessage::Progress(0.5)).unwrap();
        assert_eq!(line, r#"{"progress":0.5}"#);
    }
}
