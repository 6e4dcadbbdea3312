use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "s2t-worker", version, about = "pg_s2t transcription worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a CTranslate2 (faster-whisper) Whisper model directory to a
    /// whisper.cpp ggml file.
    ConvertModel {
        /// Directory holding model.bin and vocabulary.txt.
        #[arg(long)]
        ct2: PathBuf,
        /// The ggml file to write.
        #[arg(long)]
        out: PathBuf,
        /// Load the written file in whisper.cpp and compare its
        /// hyper-parameters.
        #[arg(long)]
        verify: bool,
    },
}

fn verify(path: &std::path::Path, h: &s2t_worker::model::HParams) -> anyhow::Result<()> {
    use whisper_rs::{WhisperContext, WhisperContextParameters};
    let ctx = WhisperContext::new_with_params(path, WhisperContextParameters::default())
        .map_err(|e| anyhow::anyhow!("whisper.cpp could not load {}: {e}", path.display()))?;
    let loaded = [
        ctx.model_n_vocab(),
        ctx.model_n_audio_ctx(),
        ctx.model_n_audio_state(),
        ctx.model_n_audio_head(),
        ctx.model_n_audio_layer(),
        ctx.model_n_text_ctx(),
        ctx.model_n_text_state(),
        ctx.model_n_text_head(),
        ctx.model_n_text_layer(),
        ctx.model_n_mels(),
        ctx.model_ftype(),
    ];
    let written = h.fields();
    anyhow::ensure!(
        loaded == written,
        "whisper.cpp reads {loaded:?}, the converter wrote {written:?}"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ConvertModel {
            ct2,
            out,
            verify: check,
        } => {
            let started = std::time::Instant::now();
            let report = s2t_worker::model::convert_ct2_to_ggml(&ct2, &out)
                .with_context(|| format!("converting {}", ct2.display()))?;
            println!(
                "wrote {} ({} bytes, {} tensors, {} tokens) in {:.1} s; hparams {:?}",
                out.display(),
                report.bytes,
                report.tensors,
                report.vocabulary,
                started.elapsed().as_secs_f64(),
                report.hparams
            );
            if check {
                verify(&out, &report.hparams)?;
                println!(
                    "verified: whisper.cpp loads {} with these hyper-parameters",
                    out.display()
                );
            }
        }
    }
    Ok(())
}
