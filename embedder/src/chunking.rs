//! Chunking: content longer than the model reads at once is split into overlapping windows of
//! tokens, each embedded on its own and stored as a passage of the memory (memory_chunks), so
//! that a long memory is found by any of its parts, not only by its first window.
//!
//! A text is first cut into pieces — the local model's own tokens (exact), or for an API, whose
//! tokenizer is unknown here, about four characters of a word each — and windows of `tokens`
//! pieces are laid over them, each starting `tokens - overlap` pieces after the one before
//! (moved back to the start of a word, so that no window starts inside one). A text of one
//! window is one passage: the whole text, embedded exactly as before chunking.

use std::ops::Range;

/// A token's place in its text, in bytes, and whether it starts a word (a window may start
/// there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub start: usize,
    pub end: usize,
    pub starts_word: bool,
}

/// How texts are split: windows of `tokens` tokens, `overlap` of them shared with the window
/// before, at most `max_chunks` windows (the rest of a longer text is not embedded; full-text
/// search still finds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    pub tokens: usize,
    pub overlap: usize,
    pub max_chunks: usize,
}

impl Chunking {
    /// Checked settings: a window of at least one token, the overlap smaller than the window.
    pub fn new(tokens: usize, overlap: usize, max_chunks: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(tokens >= 1, "chunks must be at least 1 token long");
        anyhow::ensure!(overlap < tokens, "the chunk overlap ({overlap} tokens) must be smaller than the chunk ({tokens} tokens)");
        anyhow::ensure!(max_chunks >= 1, "at least one chunk per memory must be allowed");
        Ok(Self { tokens, overlap, max_chunks })
    }

    /// How many tokens the passages of one text cover at most.
    pub fn max_tokens(&self) -> usize {
        self.tokens + (self.max_chunks - 1) * (self.tokens - self.overlap)
    }

    /// The passages of `text` (byte ranges, in order) over its `pieces`: the whole text when it
    /// fits one window. `complete`: the pieces cover the whole text (else only a prefix of it
    /// was tokenised, and no passage goes beyond the last piece).
    pub fn passages(&self, text: &str, pieces: &[Piece], complete: bool) -> Vec<Range<usize>> {
        if pieces.is_empty() || (complete && pieces.len() <= self.tokens) {
            return vec![0..text.len()];
        }
        let step = self.tokens - self.overlap;
        let mut passages = Vec::new();
        let mut first = 0;
        loop {
            let last = (first + self.tokens).min(pieces.len());
            // the first passage starts where the text does, and the last ends where it does:
            // leading and trailing spaces are part of the content's offsets
            let start = if passages.is_empty() { 0 } else { pieces[first].start };
            let end = if last == pieces.len() && complete { text.len() } else { pieces[last - 1].end };
            passages.push(start..end);
            if last == pieces.len() || passages.len() == self.max_chunks {
                return passages;
            }
            let mut next = first + step;
            while next > first + 1 && !pieces[next].starts_word {
                next -= 1;
            }
            first = next;
        }
    }
}

/// Pieces of about one token each for a text whose tokenizer is unknown (an API's model): each
/// word (a run of non-whitespace) in pieces of 4 characters, the usual length of a token of
/// English text. Only `max_pieces` pieces are made.
pub fn approximate_pieces(text: &str, max_pieces: usize) -> Vec<Piece> {
    const CHARACTERS_PER_TOKEN: usize = 4;
    let mut pieces = Vec::new();
    let mut chars = text.char_indices().peekable();
    while pieces.len() < max_pieces {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(word_start, _)) = chars.peek() else { break };
        let mut start = word_start;
        let mut count = 0;
        let mut end = start;
        while let Some((at, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
            end = at + c.len_utf8();
            count += 1;
            if count == CHARACTERS_PER_TOKEN {
                pieces.push(Piece { start, end, starts_word: start == word_start });
                start = end;
                count = 0;
                if pieces.len() == max_pieces {
                    return pieces;
                }
            }
        }
        if count > 0 {
            pieces.push(Piece { start, end, starts_word: start == word_start });
        }
    }
    pieces
}

/// Byte ranges of `text` as character offsets (what PostgreSQL's substr() and char_length()
/// count), in one pass over the text.
pub fn character_offsets(text: &str, ranges: &[Range<usize>]) -> Vec<(i32, i32)> {
    let mut boundaries: Vec<usize> = ranges.iter().flat_map(|range| [range.start, range.end]).collect();
    boundaries.sort_unstable();
    boundaries.dedup();
    let mut characters = Vec::with_capacity(boundaries.len());
    let (mut byte, mut counted) = (0, 0usize);
    for &boundary in &boundaries {
        counted += text[byte..boundary].chars().count();
        byte = boundary;
        characters.push(counted);
    }
    let at = |byte: usize| characters[boundaries.binary_search(&byte).expect("a boundary of a range")] as i32;
    ranges.iter().map(|range| (at(range.start), at(range.end))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Piece> {
        approximate_pieces(text, usize::MAX)
    }

    #[test]
    fn a_text_of_one_window_is_one_passage_the_whole_text() {
        let chunking = Chunking::new(8, 2, 10).unwrap();
        let text = "  a short text  ";
        assert_eq!(chunking.passages(text, &words(text), true), vec![0..text.len()]);
        assert_eq!(chunking.passages("", &[], true), vec![0..0]);
    }

    #[test]
    fn windows_overlap_start_at_words_and_cover_the_text() {
        // one-letter words: one piece each
        let text = (0..20).map(|i| char::from(b'a' + i as u8).to_string()).collect::<Vec<_>>().join(" ");
        let chunking = Chunking::new(8, 3, 10).unwrap();
        let passages = chunking.passages(&text, &words(&text), true);
        let shown: Vec<&str> = passages.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(shown, ["a b c d e f g h", "f g h i j k l m", "k l m n o p q r", "p q r s t"]);
    }

    #[test]
    fn a_window_never_starts_inside_a_word() {
        // "abcdefghijkl" is three pieces of one word; a window may not start at its 2nd or 3rd
        let text = "x y abcdefghijkl z w v u";
        let pieces = words(text);
        assert_eq!(pieces.len(), 9);
        let passages = Chunking::new(4, 1, 10).unwrap().passages(text, &pieces, true);
        for passage in &passages[1..] {
            let start = passage.start;
            assert!(start == 0 || text.as_bytes()[start - 1] == b' ', "{:?} starts inside a word", &text[passage.clone()]);
        }
        assert_eq!(passages.last().unwrap().end, text.len());
    }

    #[test]
    fn at_most_max_chunks_passages() {
        let text = "w ".repeat(1000);
        let passages = Chunking::new(10, 2, 5).unwrap().passages(&text, &words(&text), true);
        assert_eq!(passages.len(), 5);
        assert_eq!(Chunking::new(10, 2, 5).unwrap().max_tokens(), 10 + 4 * 8);
    }

    #[test]
    fn a_prefix_of_pieces_never_gives_a_passage_beyond_them() {
        let text = "w ".repeat(100);
        let pieces = &words(&text)[..25];
        let passages = Chunking::new(10, 2, 5).unwrap().passages(&text, pieces, false);
        assert_eq!(passages.last().unwrap().end, pieces[24].end);
        // fewer pieces than a window, but only a prefix: still not the whole text
        assert_eq!(Chunking::new(10, 2, 5).unwrap().passages(&text, &pieces[..3], false), vec![0..pieces[2].end]);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Chunking::new(0, 0, 1).is_err());
        assert!(Chunking::new(4, 4, 1).is_err());
        assert!(Chunking::new(4, 1, 0).is_err());
    }

    #[test]
    fn approximate_pieces_are_four_characters_of_a_word() {
        let text = "héllo wörld, 日本語のテキスト";
        let pieces = words(text);
        let shown: Vec<(&str, bool)> = pieces.iter().map(|p| (&text[p.start..p.end], p.starts_word)).collect();
        assert_eq!(shown, [("héll", true), ("o", false), ("wörl", true), ("d,", false), ("日本語の", true), ("テキスト", false)]);
        assert_eq!(approximate_pieces(text, 3).len(), 3);
    }

    #[test]
    fn character_offsets_count_characters_not_bytes() {
        let text = "añb€c𝄞d";
        let ranges = [0..text.len(), 1..3, 3..7, 7..text.len()];
        assert_eq!(character_offsets(text, &ranges), vec![(0, 7), (1, 2), (2, 4), (4, 7)]);
    }
}
