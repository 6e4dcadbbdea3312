//! HTTP `Range: bytes=...` for audio playback (one range; browsers ask for
//! one).

/// What to send for a Range header over `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable Range header: the whole body, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial { start: u64, end: u64 },
    /// Outside the body, 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n`. Anything else, including
/// several ranges, is ignored (RFC 9110 allows answering with the whole body).
pub fn parse(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        (true, true) => return RangeAnswer::Full,
        // Suffix: the last n bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return RangeAnswer::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => None,
        },
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|a| (a, len.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))),
            (Ok(_), Ok(_)) => return RangeAnswer::Full,
            _ => None,
        },
    };
    match parsed {
        None => RangeAnswer::Full,
        Some((start, _)) if len == 0 || start >= len => RangeAnswer::Unsatisfiable,
        Some((start, end)) => RangeAnswer::Partial { start, end },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn the_three_forms() {
        assert_eq!(
            parse(Some("bytes=0-99"), 1000),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=900-"), 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse(Some("bytes=-100"), 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        // An end past the body is clamped.
        assert_eq!(
            parse(Some("bytes=10-5000"), 1000),
            Partial {
                start: 10,
                end: 999
            }
        );
    }

    #[test]
    fn out_of_range_is_416_and_nonsense_is_the_full_body() {
        assert_eq!(parse(Some("bytes=1000-"), 1000), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 1000), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse(None, 1000), Full);
        assert_eq!(parse(Some("items=0-1"), 1000), Full);
        assert_eq!(parse(Some("bytes=0-1,5-6"), 1000), Full);
        assert_eq!(parse(Some("bytes=x-y"), 1000), Full);
        assert_eq!(parse(Some("bytes=9-3"), 1000), Full);
    }
}
