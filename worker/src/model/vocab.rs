//! Whisper's vocabulary as whisper.cpp stores it: raw token bytes.
//!
//! CTranslate2's `vocabulary.txt` writes each BPE token in GPT-2's
//! byte-to-unicode form, where every byte maps to a printable character
//! (space becomes `Ġ`, newline `Ċ`). This undoes that mapping.

use std::collections::HashMap;

/// The character GPT-2 uses for each byte, inverted: char → byte.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    printable.extend(u32::from('¡')..=u32::from('¬'));
    printable.extend(u32::from('®')..=u32::from('ÿ'));
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for byte in 0u32..256 {
        let ch = if printable.contains(&byte) {
            byte
        } else {
            shifted += 1;
            255 + shifted
        };
        map.insert(
            char::from_u32(ch).expect("GPT-2 byte characters are valid"),
            byte as u8,
        );
    }
    map
}

/// The end of the regular BPE tokens; whisper.cpp adds the specials itself.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Raw bytes of every regular token, in id order, from the lines of
/// `vocabulary.txt`. Fails on a character outside the byte alphabet.
pub fn regular_tokens(vocabulary_txt: &str) -> Result<Vec<Vec<u8>>, String> {
    let decode = unicode_to_byte();
    let mut tokens = Vec::new();
    for (line_no, line) in vocabulary_txt.split('\n').enumerate() {
        if line == END_OF_TEXT {
            return Ok(tokens);
        }
        let bytes = line
            .chars()
            .map(|c| {
                decode.get(&c).copied().ok_or_else(|| {
                    format!(
                        "vocabulary line {}: {c:?} is not a GPT-2 byte character",
                        line_no + 1
                    )
                })
            })
            .collect::<Result<Vec<u8>, String>>()?;
        tokens.push(bytes);
    }
    Err(format!("vocabulary has no {END_OF_TEXT} line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_all_256_bytes() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'!'], b'!');
        assert_eq!(map[&'Ā'], 0);
    }

    #[test]
    fn decodes_lines_until_end_of_text() {
        let vocab = "!\nĠthe\nĠxin\nÃł\n\n<|endoftext|>\n<|startoftranscript|>";
        let tokens = regular_tokens(vocab).unwrap();
        assert_eq!(tokens.len(), 5);
        assert_eq!(tokens[1], b" the");
        // "à" is two UTF-8 bytes, each its own character in the file.
        assert_eq!(tokens[3], "à".as_bytes());
        assert_eq!(tokens[4], b"");
        assert!(regular_tokens("Ġa\nĠb").is_err());
        assert!(regular_tokens("a\u{4e00}\n<|endoftext|>").is_err());
    }
}
