//! Durations as Istio YAML writes them: `5s`, `0.25s`, `100ms`, `1m`, `1h`, `2h30m`.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub fn as_std(self) -> StdDuration {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected a number with a unit (h, m, s, ms, us, ns), e.g. \"5s\" or \"250ms\"")]
pub struct ParseDurationError {
    pub input: String,
}

impl std::str::FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Duration, ParseDurationError> {
        let err = || ParseDurationError {
            input: s.to_string(),
        };
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(err());
        }
        let mut total = 0f64;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if num_len == 0 {
                return Err(err());
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                _ => return Err(err()),
            };
            total += value * scale;
            rest = &rest[unit_len..];
        }
        if !total.is_finite() || total > 1e12 {
            return Err(err());
        }
        Ok(Duration(StdDuration::from_secs_f64(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> StdDuration {
        s.parse::<Duration>().map(Duration::as_std).expect(s)
    }

    #[test]
    fn parses_istio_forms() {
        assert_eq!(d("5s"), StdDuration::from_secs(5));
        assert_eq!(d("0.25s"), StdDuration::from_millis(250));
        assert_eq!(d("100ms"), StdDuration::from_millis(100));
        assert_eq!(d("1m"), StdDuration::from_secs(60));
        assert_eq!(d("2h30m"), StdDuration::from_secs(9000));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "5", "s", "5 s", "5x", "-1s", "1..2s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} accepted");
        }
    }
}
