//! Text into terms: lower-cased words of two letters or more, English stop words dropped,
//! stemmed with the Snowball English stemmer.

use rust_stemmers::{Algorithm, Stemmer};

/// Words too common to tell events apart.
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "but", "by", "can", "do", "for", "from", "has", "have", "how", "in", "into", "is", "it", "its",
    "join", "more", "my", "new", "not", "of", "on", "or", "our", "out", "so", "than", "that",
    "the", "their", "them", "then", "there", "these", "this", "to", "up", "us", "was", "we",
    "what", "when", "where", "which", "who", "will", "with", "you", "your",
];

/// Turns text into stemmed terms.
pub struct Analyzer {
    stemmer: Stemmer,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self {
            stemmer: Stemmer::create(Algorithm::English),
        }
    }
}

impl Analyzer {
    /// The terms of `text`, in order, repeats kept.
    pub fn terms(&self, text: &str) -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 2)
            .map(str::to_lowercase)
            .filter(|w| STOP_WORDS.binary_search(&w.as_str()).is_err())
            .map(|w| self.stemmer.stem(&w).into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_the_binary_search() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn words_are_lowered_stemmed_and_stop_words_dropped() {
        let a = Analyzer::default();
        assert_eq!(
            a.terms("The Running of the Conferences, in Berlin!"),
            vec!["run", "confer", "berlin"]
        );
    }
}
