//! Each transcription runs in a child process (`s2t-worker transcribe-job`)
//! that the job's slot supervises, so that a crash which ends a process (a
//! whisper.cpp `GGML_ASSERT` abort, an allocation failure, the OOM killer)
//! ends only that job's attempt: the slot sees the child die, reports the
//! attempt as failed (retryable; after `max_attempts` the recording fails
//! with the reason) and goes on, and the other slots' jobs never notice.
//!
//! The parent keeps everything that talks to the database (the claim, the
//! lease keeper, reading the audio, completion); the child gets the audio
//! as a file (the parent's spooled copy) and the settings as arguments,
//! loads the one model the job needs, decodes, resamples and transcribes as
//! a stream, in blocks ([`crate::blocks`]), and answers with JSON lines on
//! stdout: the decoded length, progress, then one result. Cancelling (a
//! lost lease, a shutdown past its grace) kills the child, which stops the
//! decode at once.

use crate::asr::{Engine, EngineError, ModelPaths, TranscribeOptions};
use crate::audio::stream::{self, Source};
use crate::audio::AudioError;
use crate::blocks::{transcribe_path, BlockPolicy, LongError, Plan};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// The audio file to transcribe.
    pub audio: PathBuf,
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
            "--audio".into(),
            self.audio.display().to_string(),
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

/// The child's side: transcribe the audio file in blocks of `blocks`,
/// answering on stdout.
pub fn run_child(job: &ChildJob, blocks: BlockPolicy) {
    let emit: Arc<dyn Fn(&ChildMessage) + Send + Sync> = Arc::new(emit);
    let answer = transcribe_job(job, blocks, emit.clone());
    emit(&answer);
}

fn audio_failure(e: AudioError) -> ChildMessage {
    match e {
        // The worker's own copy: a retry may find it readable.
        AudioError::Unreadable(_) => ChildMessage::Failed {
            permanent: false,
            reason: format!("reading the audio from the worker's copy failed: {e}"),
        },
        // Bad input never gets better: no retries.
        _ => ChildMessage::Failed {
            permanent: true,
            reason: describe_audio_error(&e),
        },
    }
}

/// One job, start to end: every message but the last goes to `emit`, the
/// last (`Done` or `Failed`) is returned.
///
/// The file is read twice. The first pass decodes without resampling or
/// keeping anything, which gives the exact length for `Decoded` (the parent
/// settles the job's reservation with it while Whisper runs, which on a
/// long file is most of the job), the allowance cut's notice, the length
/// limit and the damage verdict, all before the model is even loaded. The
/// second pass decodes again, resamples and transcribes block by block.
///
/// Measured on an 11-minute 48 kHz stereo file in each container
/// (`scripts/bench_memory.sh`, two runs): the counting pass cost 0.23 s
/// of CPU (wav) to 1.5–1.7 s (opus), against minutes of Whisper for the
/// same audio; on a 2-hour WAV the child reported the length 11.4 s after
/// it started, on a loaded machine. Summing
/// the container's packet durations instead costs nothing, but it is not
/// the decoded length: webm carried no durations at all, Ogg Opus counted
/// the encoder's pre-skip and m4a was 752 frames short; nor does it see
/// damaged packets.
pub fn transcribe_job(
    job: &ChildJob,
    blocks: BlockPolicy,
    emit: Arc<dyn Fn(&ChildMessage) + Send + Sync>,
) -> ChildMessage {
    let extension = job.extension.as_deref();
    let measured = match Source::open_path(&job.audio, extension)
        .and_then(|source| stream::measure(source, job.max_audio_secs))
    {
        Ok(m) => m,
        Err(e) => return audio_failure(e),
    };
    let audio_ms = measured.duration_ms();
    let total_samples = measured.lengths.target_samples();
    let mut duration_ms = i32::try_from(audio_ms).unwrap_or(i32::MAX);
    emit(&ChildMessage::Decoded {
        audio_ms: duration_ms,
    });
    let mut notice = None;
    let mut keep_samples = None;
    if let Some((keep, ms, text)) = crate::runner::cut_to_allowance(
        usize::try_from(total_samples).unwrap_or(usize::MAX),
        audio_ms,
        job.max_ms,
    ) {
        keep_samples = Some(keep as u64);
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
    let plan = Plan {
        policy: blocks,
        keep_samples,
        total_samples: keep_samples.unwrap_or(total_samples),
        progress: Arc::new(move |f| emit(&ChildMessage::Progress(f))),
    };
    match transcribe_path(
        &engine,
        &job.audio,
        extension,
        job.max_audio_secs,
        &options,
        &plan,
    ) {
        Ok((t, _)) => ChildMessage::Done {
            duration_ms,
            notice,
            language: t.language.clone(),
            segment_count: t.segments.len(),
            segments: serde_json::to_value(&t.segments).expect("segments serialise"),
        },
        Err(LongError::Audio(e)) => audio_failure(e),
        Err(LongError::Engine(e @ EngineError::NoModel(_))) => ChildMessage::Failed {
            permanent: true,
            reason: format!("transcription failed: {e}"),
        },
        Err(LongError::Engine(e)) => ChildMessage::Failed {
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
            audio: "/tmp/a b.wav".into(),
        };
        let args = job.args();
        assert!(args.windows(2).any(|w| w == ["--audio", "/tmp/a b.wav"]));
        assert_eq!(args[0], "transcribe-job");
        assert!(args.windows(2).any(|w| w == ["--max-ms", "1500"]));
        assert!(args.windows(2).any(|w| w == ["--prompt", "Postgres"]));
        let line = serde_json::to_string(&ChildMessage::Progress(0.5)).unwrap();
        assert_eq!(line, r#"{"progress":0.5}"#);
    }
}
