//! How times read to people: the same words in the CLI, Slack replies and notifications.

use crate::Timestamp;

/// `2025-01-17 12:00:00 UTC` (the IP Whitelist Manager's notification format).
pub fn format_utc(t: Timestamp) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_else(|_| t.to_string())
}

/// "expires in 6d 23h", "expires in 4m 59s", or "expired".
pub fn time_left(at: Timestamp, now: Timestamp) -> String {
    let left = at - now;
    if left <= time::Duration::ZERO {
        return "expired".into();
    }
    let (d, h, m, s) = (left.whole_days(), left.whole_hours() % 24, left.whole_minutes() % 60, left.whole_seconds() % 60);
    let text = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    };
    format!("expires in {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn readable() {
        let now = datetime!(2025-01-10 12:00:00 UTC);
        assert_eq!(format_utc(datetime!(2025-01-17 12:00:00 UTC)), "2025-01-17 12:00:00 UTC");
        assert_eq!(time_left(now + time::Duration::minutes(7 * 24 * 60 - 1), now), "expires in 6d 23h");
        assert_eq!(time_left(now + time::Duration::seconds(299), now), "expires in 4m 59s");
        assert_eq!(time_left(now + time::Duration::seconds(5), now), "expires in 5s");
        assert_eq!(time_left(now, now), "expired");
    }
}
