//! Transcript downloads: plain text, SubRip and WebVTT from stored segments.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub idx: i32,
    pub start_ms: i32,
    pub end_ms: i32,
    pub text: String,
}

/// The download formats of `GET /recordings/{id}/transcript.{ext}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Txt,
    Srt,
    Vtt,
    Json,
}

impl Format {
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext {
            "txt" => Some(Format::Txt),
            "srt" => Some(Format::Srt),
            "vtt" => Some(Format::Vtt),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Json => "json",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Txt => "text/plain; charset=utf-8",
            Format::Srt => "application/x-subrip; charset=utf-8",
            Format::Vtt => "text/vtt; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// `HH:MM:SS<sep>mmm`: SubRip separates milliseconds with a comma, WebVTT
/// with a dot.
fn timestamp(ms: i32, sep: char) -> String {
    let ms = ms.max(0);
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{milli:03}")
}

/// Cue text may not contain a blank line (it would end the cue), nor
/// "-->" (a cue timing line). Empty when there is no text at all.
fn cue_lines(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// SubRip has no escapes; an arrow inside text is shortened so no line
/// looks like a timing line.
fn srt_text(text: &str) -> String {
    cue_lines(text).replace("-->", "->")
}

/// WebVTT cue text is HTML-like: `&` and `<` must be escaped (`&amp;`,
/// `&lt;`), and `>` too where it would complete "-->", which cue text must
/// never contain. Escaping every `>` is valid and covers that.
fn vtt_text(text: &str) -> String {
    cue_lines(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn to_txt(segments: &[Segment]) -> String {
    let mut out = segments
        .iter()
        .map(|s| s.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// Segments with something to show, each with its cue text: a blank cue
/// is at best noise and, in SubRip, a parse error for some players.
fn cues(
    segments: &[Segment],
    text: fn(&str) -> String,
) -> impl Iterator<Item = (&Segment, String)> {
    segments
        .iter()
        .map(move |s| (s, text(&s.text)))
        .filter(|(_, t)| !t.is_empty())
}

pub fn to_srt(segments: &[Segment]) -> String {
    let mut out = String::new();
    // Numbered after the blanks are dropped, so the numbers stay 1, 2, 3.
    for (n, (s, text)) in cues(segments, srt_text).enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            n + 1,
            timestamp(s.start_ms, ','),
            timestamp(s.end_ms.max(s.start_ms), ','),
            text
        ));
    }
    out
}

pub fn to_vtt(segments: &[Segment]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for (s, text) in cues(segments, vtt_text) {
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(s.start_ms, '.'),
            timestamp(s.end_ms.max(s.start_ms), '.'),
            text
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs() -> Vec<Segment> {
        vec![
            Segment {
                idx: 0,
                start_ms: 0,
                end_ms: 2_500,
                text: " Xin chào ".into(),
            },
            Segment {
                idx: 1,
                start_ms: 3_723_004,
                end_ms: 3_725_000,
                text: "a --> b\n\nsecond line".into(),
            },
        ]
    }

    #[test]
    fn timestamps_carry_hours_minutes_and_milliseconds() {
        assert_eq!(timestamp(3_723_004, ','), "01:02:03,004");
        assert_eq!(timestamp(59_999, '.'), "00:00:59.999");
        assert_eq!(timestamp(-5, '.'), "00:00:00.000");
    }

    #[test]
    fn srt_numbers_cues_from_one_and_keeps_cues_intact() {
        let srt = to_srt(&segs());
        assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:02,500\nXin chào\n\n2\n"));
        assert!(srt.contains("01:02:03,004 --> 01:02:05,000\na -> b\nsecond line\n\n"));
        // No blank line inside a cue.
        assert_eq!(srt.matches("\n\n").count(), 2);
    }

    #[test]
    fn vtt_has_its_header_and_dotted_milliseconds() {
        let vtt = to_vtt(&segs());
        assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nXin chào\n\n"));
        assert!(!vtt.contains("a --> b"));
    }

    fn seg(idx: i32, text: &str) -> Segment {
        Segment {
            idx,
            start_ms: idx * 1000,
            end_ms: idx * 1000 + 900,
            text: text.into(),
        }
    }

    #[test]
    fn vtt_escapes_ampersands_tags_and_arrows() {
        let vtt = to_vtt(&[seg(0, "Q&A <b>bold</b> a --> b &amp;")]);
        let cue = vtt.lines().nth(3).unwrap();
        assert_eq!(cue, "Q&amp;A &lt;b&gt;bold&lt;/b&gt; a --&gt; b &amp;amp;");
        // Only the timing line carries an arrow.
        assert_eq!(vtt.matches("-->").count(), 1, "{vtt}");
        let cue_text = vtt
            .split_once("\n\n")
            .unwrap()
            .1
            .lines()
            .skip(1)
            .collect::<String>();
        assert!(!cue_text.contains('<') && !cue_text.contains("-->"));
    }

    #[test]
    fn blank_segments_make_no_cues_and_srt_numbers_stay_consecutive() {
        let segments = [
            seg(0, "one"),
            seg(1, "   "),
            seg(2, ""),
            seg(3, "\n \t\n"),
            seg(4, "two"),
            seg(5, "three"),
        ];
        let srt = to_srt(&segments);
        let numbers: Vec<&str> = srt
            .split("\n\n")
            .filter(|b| !b.is_empty())
            .map(|b| b.lines().next().unwrap())
            .collect();
        assert_eq!(numbers, ["1", "2", "3"], "{srt}");
        assert!(
            srt.contains("2\n00:00:04,000 --> 00:00:04,900\ntwo\n"),
            "{srt}"
        );
        assert_eq!(srt.matches(" --> ").count(), 3);
        let vtt = to_vtt(&segments);
        assert_eq!(vtt.matches(" --> ").count(), 3, "{vtt}");
        assert!(!vtt.contains("\n\n\n"), "no empty cue: {vtt:?}");
        assert_eq!(to_vtt(&[seg(0, " ")]), "WEBVTT\n\n");
        assert_eq!(to_srt(&[seg(0, " ")]), "");
    }

    #[test]
    fn text_is_one_line_per_segment() {
        assert_eq!(to_txt(&segs()[..1]), "Xin chào\n");
        assert_eq!(Format::from_extension("srt"), Some(Format::Srt));
        assert_eq!(Format::from_extension("exe"), None);
    }
}
