//! The small languages of the YAML files: durations (`500ms`, `30s`, `5m`, `1d`) and rates
//! (`100/10s`). Parsed once, at compile time, into typed values.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// `count` requests per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub interval: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.interval))
    }
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h` or `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `500ms`, `30s`, `5m`"))?;
    if d.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(d)
}

/// Parses `count/interval`, e.g. `100/10s` or `200000/1d`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let (count, interval) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not a rate; write `count/interval`, e.g. `100/10s`"))?;
    let count = count
        .trim()
        .parse::<NonZeroU32>()
        .map_err(|_| format!("`{text}`: `{count}` is not a positive whole number"))?;
    Ok(Rate { count, interval: parse_duration(interval)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        let r = parse_rate("100/10s").unwrap();
        assert_eq!((r.count.get(), r.interval), (100, Duration::from_secs(10)));
        assert_eq!(parse_rate("200000/1d").unwrap().interval, Duration::from_secs(86_400));
        assert!(parse_rate("0/10s").is_err());
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("100/soon").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0s").is_err());
    }
}
