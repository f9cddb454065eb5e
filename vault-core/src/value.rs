//! Plaintext field values. They are the personal data the vault exists to protect: the buffer is
//! zeroed when dropped and `Debug` never prints it.

use std::fmt;

use chrono::NaiveDate;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::catalog::FieldType;
use crate::domain::Iin;

/// Largest accepted value, as JSON text: a photo fits, a video does not.
pub const MAX_VALUE_BYTES: usize = 2 * 1024 * 1024;

/// One field's plaintext, held as its JSON text.
pub struct FieldValue(Zeroizing<String>);

impl FieldValue {
    /// Takes a JSON value (a string, number, date string, object...).
    pub fn from_json(v: &Value) -> Self {
        FieldValue(Zeroizing::new(v.to_string()))
    }

    /// A plain text value.
    pub fn text(s: &str) -> Self {
        Self::from_json(&Value::String(s.to_owned()))
    }

    pub(crate) fn from_plaintext(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes)
            .ok()
            .map(|s| FieldValue(Zeroizing::new(s.to_owned())))
    }

    /// The JSON text. Handle with care: this is the sensitive value.
    pub fn expose_json(&self) -> &str {
        &self.0
    }

    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Checks the value against the field's type. The message names the expected shape and
    /// never echoes the value.
    pub(crate) fn check(&self, ty: FieldType) -> Result<(), &'static str> {
        if self.0.len() > MAX_VALUE_BYTES {
            return Err("a value of at most 2 MiB");
        }
        let v: Value = serde_json::from_str(&self.0).map_err(|_| "valid JSON")?;
        let ok = match ty {
            FieldType::Text => matches!(v, Value::String(_)),
            FieldType::Number => v.is_number(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Date => v
                .as_str()
                .is_some_and(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()),
            FieldType::Iin => v.as_str().is_some_and(|s| Iin::parse(s).is_ok()),
            FieldType::Json => !v.is_null(),
        };
        if ok {
            Ok(())
        } else {
            Err(match ty {
                FieldType::Text => "a JSON string",
                FieldType::Number => "a JSON number",
                FieldType::Boolean => "true or false",
                FieldType::Date => "a date as \"YYYY-MM-DD\"",
                FieldType::Iin => "a valid 12-digit IIN as a string",
                FieldType::Json => "a JSON value other than null",
            })
        }
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FieldValue(<redacted>)")
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        // Not constant-time: used by tests and callers comparing their own data, never secrets
        // against attacker input.
        *self.0 == *other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_checked_without_echoing() {
        assert!(FieldValue::text("Aigerim").check(FieldType::Text).is_ok());
        assert!(
            FieldValue::from_json(&json!(5))
                .check(FieldType::Text)
                .is_err()
        );
        assert!(
            FieldValue::text("2012-09-01")
                .check(FieldType::Date)
                .is_ok()
        );
        assert!(
            FieldValue::text("2012-13-01")
                .check(FieldType::Date)
                .is_err()
        );
        assert!(
            FieldValue::text("900101301233")
                .check(FieldType::Iin)
                .is_ok()
        );
        assert!(
            FieldValue::text("900101301234")
                .check(FieldType::Iin)
                .is_err()
        );
        assert!(
            FieldValue::from_json(&json!({"math": 5}))
                .check(FieldType::Json)
                .is_ok()
        );
        assert!(!format!("{:?}", FieldValue::text("secret-marker")).contains("secret-marker"));
    }

    /// The limit is 2 MiB of JSON text exactly: a value of that size is accepted, one byte more
    /// is refused with the limit named.
    #[test]
    fn the_size_limit_is_two_mebibytes_exactly() {
        assert_eq!(MAX_VALUE_BYTES, 2_097_152);
        let at = FieldValue::text(&"a".repeat(MAX_VALUE_BYTES - 2));
        assert_eq!(at.expose_json().len(), MAX_VALUE_BYTES);
        assert_eq!(at.check(FieldType::Text), Ok(()));
        let over = FieldValue::text(&"a".repeat(MAX_VALUE_BYTES - 1));
        assert_eq!(over.check(FieldType::Text), Err("a value of at most 2 MiB"));
    }

    /// The JSON text, its bytes and the parsed value agree, and bytes read back from a sealed
    /// field make the same value; a value is equal only to the same value.
    #[test]
    fn views_agree_and_bytes_round_trip() {
        let v = FieldValue::from_json(&json!({"class": "5A", "n": 3}));
        assert_eq!(v.expose_json(), r#"{"class":"5A","n":3}"#);
        assert_eq!(v.as_bytes(), v.expose_json().as_bytes());
        assert_eq!(v.to_json(), json!({"class": "5A", "n": 3}));
        let back = FieldValue::from_plaintext(v.as_bytes()).expect("utf-8");
        assert_eq!(back, v);
        assert!(FieldValue::text("a") != FieldValue::text("b"));
        assert!(FieldValue::from_plaintext(&[0xff, 0xfe]).is_none());
        assert_eq!(
            format!("{:?}", FieldValue::text("x")),
            "FieldValue(<redacted>)"
        );
    }
}
