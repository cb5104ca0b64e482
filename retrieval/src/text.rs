//! The tokenizer of every BM25 path: runs of alphanumeric characters,
//! lowercased, minus a short English stopword list. Changing it changes every
//! index's terms: bump [`crate::format::TOKENIZER`] with it.

/// Words too common to rank by.
pub const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "did", "do", "does", "for", "from",
    "had", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "of", "on", "or", "she", "that", "the", "their", "them", "there", "these", "they", "this",
    "to", "was", "were", "what", "when", "where", "which", "who", "whom", "why", "will", "with",
];

/// The terms of `text`, in order, repeats kept.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
}

/// The terms of a passage as BM25 counts them: its title's, then its text's.
pub fn passage_tokens<'a>(title: &'a str, text: &'a str) -> impl Iterator<Item = String> + 'a {
    tokens(title).chain(tokens(text))
}
