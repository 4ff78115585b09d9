//! How values are shown: times, payloads, enum names, page tokens and tables.
//!
//! Everything here is pure so it can be tested without a server.

use std::io::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;
use weft_proto::v1::{EventType, Failure, WorkflowStatus};

use crate::cli::OutputFormat;

/// Payload text in a table cell is cut to this many characters.
pub const CELL_PAYLOAD_CHARS_MAX: usize = 60;

/// A table with the style every command uses.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    table
}

/// A two-column table of labelled values.
pub fn key_values(rows: &[(&str, String)]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    for (key, value) in rows {
        table.add_row(vec![key.to_string(), value.clone()]);
    }
    table
}

/// Prints a JSON document (pretty) or a block of text, depending on `--output`.
pub fn print(format: OutputFormat, json: Value, text: impl FnOnce() -> String) {
    let document = match format {
        OutputFormat::Json => serde_json::to_string_pretty(&json).expect("a serde_json::Value always serialises"),
        OutputFormat::Table => text(),
    };
    let mut stdout = std::io::stdout().lock();
    // A reader that went away (`weft ... | head`) is not an error worth a panic.
    let _ = writeln!(stdout, "{document}").and_then(|()| stdout.flush());
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds:
/// `2024-05-01T12:30:00.123Z`. Zero means "not set" and prints as `-`.
pub fn format_time_ms(time_ms: u64) -> String {
    if time_ms == 0 {
        return "-".to_string();
    }
    let millis = time_ms % 1000;
    let seconds = time_ms / 1000;
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// `format_time_ms` for JSON: `null` when the time is not set.
pub fn time_json(time_ms: u64) -> Value {
    if time_ms == 0 { Value::Null } else { Value::String(format_time_ms(time_ms)) }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A payload as JSON: parsed when it is JSON, the lossy UTF-8 text otherwise, `null` when empty.
pub fn payload_json(payload: &[u8]) -> Value {
    if payload.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// A payload as compact text: its JSON re-serialised, or the lossy UTF-8 text when not JSON.
pub fn payload_text(payload: &[u8]) -> String {
    match serde_json::from_slice::<Value>(payload) {
        Ok(value) => value.to_string(),
        Err(_) => String::from_utf8_lossy(payload).into_owned(),
    }
}

/// Cuts `text` to `chars_max` characters, marking the cut with `…`.
pub fn truncate(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A failure as JSON, `null` when absent.
pub fn failure_json(failure: Option<&Failure>) -> Value {
    match failure {
        None => Value::Null,
        Some(failure) => serde_json::json!({
            "message": failure.message,
            "error_type": failure.error_type,
            "non_retryable": failure.non_retryable,
            "details": payload_json(&failure.details),
        }),
    }
}

/// A failure as one line: `ErrorType: message`.
pub fn failure_text(failure: &Failure) -> String {
    let mut text = if failure.error_type.is_empty() {
        failure.message.clone()
    } else {
        format!("{}: {}", failure.error_type, failure.message)
    };
    if failure.non_retryable {
        text.push_str(" (non-retryable)");
    }
    text
}

/// `EVENT_TYPE_STEP_COMPLETED` → `StepCompleted`; unknown values keep their number.
pub fn event_type_name(event_type: i32) -> String {
    match EventType::try_from(event_type) {
        Ok(known) => pascal_case(known.as_str_name().strip_prefix("EVENT_TYPE_").unwrap_or(known.as_str_name())),
        Err(_) => format!("EventType({event_type})"),
    }
}

/// `WORKFLOW_STATUS_CONTINUED_AS_NEW` → `continued-as-new`, the spelling `--status` takes.
pub fn status_name(status: i32) -> String {
    match WorkflowStatus::try_from(status) {
        Ok(known) => known
            .as_str_name()
            .strip_prefix("WORKFLOW_STATUS_")
            .unwrap_or(known.as_str_name())
            .to_ascii_lowercase()
            .replace('_', "-"),
        Err(_) => format!("status({status})"),
    }
}

fn pascal_case(screaming_snake: &str) -> String {
    screaming_snake
        .split('_')
        .filter(|word| !word.is_empty())
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            let mut chars = lower.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// Page tokens are opaque bytes; people copy them as lower-case hex.
pub fn encode_token(token: &[u8]) -> String {
    token.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn decode_token(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return Err("a page token has an even number of hex digits".to_string());
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            text.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{text:?} is not a hex page token"))
        })
        .collect()
}

/// An empty string shows as `-` in tables.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() { "-".to_string() } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(format_time_ms(0), "-");
        assert_eq!(format_time_ms(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_time_ms(1_714_566_600_123), "2024-05-01T12:30:00.123Z");
        assert_eq!(format_time_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn payloads_are_json_when_they_can_be() {
        assert_eq!(payload_json(b""), Value::Null);
        assert_eq!(payload_json(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(payload_json(b"not json"), Value::String("not json".into()));
        assert_eq!(payload_text(b"{ \"a\" : 1 }"), r#"{"a":1}"#);
        assert_eq!(payload_text(&[0xff, b'x']), "\u{fffd}x");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn enum_names_are_readable() {
        assert_eq!(event_type_name(EventType::StepCompleted as i32), "StepCompleted");
        assert_eq!(event_type_name(EventType::WorkflowContinuedAsNew as i32), "WorkflowContinuedAsNew");
        assert_eq!(event_type_name(999), "EventType(999)");
        assert_eq!(status_name(WorkflowStatus::ContinuedAsNew as i32), "continued-as-new");
        assert_eq!(status_name(WorkflowStatus::Running as i32), "running");
    }

    #[test]
    fn page_tokens_round_trip_through_hex() {
        let token = vec![0, 1, 0xab, 0xff];
        assert_eq!(encode_token(&token), "0001abff");
        assert_eq!(decode_token("0001ABff"), Ok(token));
        assert!(decode_token("abc").is_err());
        assert!(decode_token("zz").is_err());
    }
}
