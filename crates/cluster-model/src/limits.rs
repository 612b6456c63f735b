//! Size and shape limits of key-value input, checked before anything is proposed to Raft.

use thiserror::Error;

/// Largest accepted key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest accepted value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Input that cannot be stored, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidInput {
    #[error("key is empty: expected 1 to {MAX_KEY_BYTES} bytes")]
    EmptyKey,
    #[error("key is {len} bytes: expected at most {MAX_KEY_BYTES} bytes")]
    KeyTooLong { len: usize },
    #[error("key contains a control character: expected printable text")]
    KeyControlCharacter,
    #[error("value of key `{key}` is {len} bytes: expected at most {MAX_VALUE_BYTES} bytes")]
    ValueTooLong { key: String, len: usize },
}

/// Checks a key against [`MAX_KEY_BYTES`] and rejects control characters.
pub fn validate_key(key: &str) -> Result<(), InvalidInput> {
    if key.is_empty() {
        return Err(InvalidInput::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(InvalidInput::KeyTooLong { len: key.len() });
    }
    if key.chars().any(char::is_control) {
        return Err(InvalidInput::KeyControlCharacter);
    }
    Ok(())
}

/// Checks a value against [`MAX_VALUE_BYTES`].
pub fn validate_value(key: &str, value: &str) -> Result<(), InvalidInput> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(InvalidInput::ValueTooLong { key: key.to_owned(), len: value.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_at_the_limit_pass_and_one_more_byte_fails() {
        assert_eq!(validate_key(&"k".repeat(MAX_KEY_BYTES)), Ok(()));
        assert_eq!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(InvalidInput::KeyTooLong { len: MAX_KEY_BYTES + 1 })
        );
        assert_eq!(validate_key(""), Err(InvalidInput::EmptyKey));
        assert_eq!(validate_key("a\nb"), Err(InvalidInput::KeyControlCharacter));
    }

    #[test]
    fn oversize_value_error_names_the_key() {
        let err = validate_value("web/config", &"v".repeat(MAX_VALUE_BYTES + 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("value of key `web/config` is {} bytes: expected at most 65536 bytes", MAX_VALUE_BYTES + 1)
        );
        assert_eq!(validate_value("k", &"v".repeat(MAX_VALUE_BYTES)), Ok(()));
    }
}
