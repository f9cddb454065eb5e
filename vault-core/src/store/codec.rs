//! Codecs shared by the repo modules: a record's state strings, the comma lists that hold
//! categories, and the error a malformed column turns into.

use crate::domain::{Category, DomainError};
use crate::error::VaultError;

/// A record that holds data.
pub(crate) const STATE_ACTIVE: &str = "active";
/// A record whose shred began: its DEKs may be gone, its ciphertext not yet.
pub(crate) const STATE_SHREDDING: &str = "shredding";
/// A record's tombstone: no DEK, no ciphertext.
pub(crate) const STATE_SHREDDED: &str = "shredded";

/// A column that does not parse: the store holds a malformed row.
pub(crate) fn corrupt<T>(r: Result<T, DomainError>, what: &'static str) -> Result<T, VaultError> {
    r.map_err(|_| VaultError::CorruptRow(what))
}

/// A comma list column from its items.
pub(crate) fn join_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",")
}

/// A comma list column of categories.
pub(crate) fn categories_list<'a>(cats: impl IntoIterator<Item = &'a Category>) -> String {
    join_list(cats.into_iter().map(Category::as_str))
}

/// The items of a comma list column, as stored (an empty column is one empty item).
pub(crate) fn split_list(s: &str) -> std::str::Split<'_, char> {
    s.split(',')
}

/// The categories of a comma list column; a malformed one is a corrupt row.
pub(crate) fn parse_categories(s: &str) -> Result<Vec<Category>, VaultError> {
    split_list(s)
        .filter(|x| !x.is_empty())
        .map(|x| corrupt(Category::parse(x), "category list"))
        .collect()
}
