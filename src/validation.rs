//! Validation helpers the request types share, beyond what `validator` checks itself.

use std::borrow::Cow;

use validator::ValidationError;

fn error(code: &'static str, message: &'static str) -> ValidationError {
    ValidationError::new(code).with_message(Cow::Borrowed(message))
}

/// Text may hold no control characters (line breaks and tabs aside), NUL above all: the
/// databases refuse it and it has no place in names or titles.
pub fn no_control_chars(s: &str) -> Result<(), ValidationError> {
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(error(
            "control_characters",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Whether a JSON value holds a NUL character anywhere, in keys or strings.
pub fn json_has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_but_line_breaks_kept() {
        assert!(no_control_chars("two\nlines\tand tab").is_ok());
        assert!(no_control_chars("nul\0byte").is_err());
        assert!(json_has_nul(&serde_json::json!({"a": ["x\u{0}"]})));
        assert!(!json_has_nul(&serde_json::json!({"a": ["x"]})));
    }
}
