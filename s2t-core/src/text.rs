//! Text folding for lexical search.
//!
//! Vietnamese users often type without diacritics ("xin chao" for
//! "xin chào"), so the full-text column and the query are both folded: the
//! text is decomposed (NFD), combining marks are dropped, `đ` becomes `d`,
//! and everything is lower-cased. The mapping is deterministic and depends on
//! no server setting, which lets PostgreSQL use it in a generated column.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Lower-case `input` and strip its diacritics.
pub fn fold_for_search(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.nfd() {
        if is_combining_mark(c) {
            continue;
        }
        match c {
            // đ/Đ are letters of their own, not d plus a mark.
            'đ' | 'Đ' => out.push('d'),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fold_for_search;

    #[test]
    fn strips_vietnamese_diacritics() {
        assert_eq!(
            fold_for_search("Xin chào các bạn. Hôm nay chúng ta sẽ họp"),
            "xin chao cac ban. hom nay chung ta se hop"
        );
        assert_eq!(
            fold_for_search("Đà Nẵng, Thừa Thiên Huế"),
            "da nang, thua thien hue"
        );
        assert_eq!(fold_for_search("kế hoạch của dự án"), "ke hoach cua du an");
    }

    #[test]
    fn leaves_plain_ascii_lowercased() {
        assert_eq!(
            fold_for_search("Postgres STORES Segments"),
            "postgres stores segments"
        );
        assert_eq!(fold_for_search(""), "");
    }

    #[test]
    fn folds_precomposed_and_decomposed_alike() {
        let precomposed = "ế";
        let decomposed = "e\u{0302}\u{0301}";
        assert_eq!(fold_for_search(precomposed), fold_for_search(decomposed));
        assert_eq!(fold_for_search(precomposed), "e");
    }
}
