//! The operational limits a user can override (timeouts, caps, drain grace), parsed once
//! from their settings. Every other timeout and size bound is a named `const` beside the
//! code it bounds.

use std::time::Duration;

use crate::config::ConfigError;

/// What each limit is and where it comes from; the defaults are documented in the README's
/// "Operations" section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT`: from sending a request upstream to its
    /// response head. Long by default: an LLM call may think for minutes before answering.
    pub response_header: Duration,
    /// `PAUDE_PROXY_CLIENT_IDLE_TIMEOUT`: a client connection with no request in flight is
    /// closed after this (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub client_idle: Duration,
    /// `PAUDE_PROXY_UPSTREAM_IDLE_TIMEOUT`: a pooled upstream connection unused this long is
    /// closed. Below the 60 s most servers use, so we never reuse one as it closes.
    pub upstream_idle: Duration,
    /// `PAUDE_PROXY_MAX_IDLE_UPSTREAM`: idle pooled upstream connections, all targets together.
    pub max_idle_upstream: usize,
    /// `PAUDE_PROXY_MAX_CONNECTIONS`: concurrent client connections; the excess is closed at once.
    pub max_connections: usize,
    /// `PAUDE_PROXY_SHUTDOWN_GRACE`: after SIGTERM/SIGINT, how long requests in flight may
    /// take to finish before the rest are cut.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            response_header: Duration::from_secs(600),
            client_idle: Duration::from_secs(120),
            upstream_idle: Duration::from_secs(50),
            max_idle_upstream: 512,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The raw settings, as clap hands them over (empty = the default).
#[derive(Clone, Debug, Default)]
pub struct RawLimits<'a> {
    pub response_header: &'a str,
    pub client_idle: &'a str,
    pub upstream_idle: &'a str,
    pub max_idle_upstream: &'a str,
    pub max_connections: &'a str,
    pub shutdown_grace: &'a str,
}

impl Limits {
    pub fn parse(raw: &RawLimits<'_>) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        Ok(Limits {
            response_header: seconds(
                "PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT",
                raw.response_header,
                d.response_header,
            )?,
            client_idle: seconds(
                "PAUDE_PROXY_CLIENT_IDLE_TIMEOUT",
                raw.client_idle,
                d.client_idle,
            )?,
            upstream_idle: seconds(
                "PAUDE_PROXY_UPSTREAM_IDLE_TIMEOUT",
                raw.upstream_idle,
                d.upstream_idle,
            )?,
            max_idle_upstream: count(
                "PAUDE_PROXY_MAX_IDLE_UPSTREAM",
                raw.max_idle_upstream,
                d.max_idle_upstream,
                0,
            )?,
            max_connections: count(
                "PAUDE_PROXY_MAX_CONNECTIONS",
                raw.max_connections,
                d.max_connections,
                1,
            )?,
            shutdown_grace: seconds_or_zero(
                "PAUDE_PROXY_SHUTDOWN_GRACE",
                raw.shutdown_grace,
                d.shutdown_grace,
            )?,
        })
    }
}

/// Whole or fractional seconds, more than zero (a zero timeout would refuse everything).
fn seconds(var: &'static str, raw: &str, default: Duration) -> Result<Duration, ConfigError> {
    match seconds_or_zero(var, raw, default)? {
        d if d.is_zero() => Err(invalid(
            var,
            raw,
            "expected seconds greater than 0, e.g. 30",
        )),
        d => Ok(d),
    }
}

fn seconds_or_zero(
    var: &'static str,
    raw: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let raw_trim = raw.trim();
    if raw_trim.is_empty() {
        return Ok(default);
    }
    let expected = "expected a number of seconds, e.g. 30 or 0.5";
    let secs: f64 = raw_trim.parse().map_err(|_| invalid(var, raw, expected))?;
    // One day is far beyond any sensible timeout and keeps Duration arithmetic safe.
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(invalid(var, raw, "expected seconds between 0 and 86400"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn count(var: &'static str, raw: &str, default: usize, min: usize) -> Result<usize, ConfigError> {
    let raw_trim = raw.trim();
    if raw_trim.is_empty() {
        return Ok(default);
    }
    match raw_trim.parse::<usize>() {
        Ok(n) if n >= min && n <= 10_000_000 => Ok(n),
        _ => Err(invalid(
            var,
            raw,
            &format!("expected a whole number from {min} to 10000000"),
        )),
    }
}

fn invalid(var: &'static str, raw: &str, problem: &str) -> ConfigError {
    ConfigError {
        var,
        value: raw.to_string(),
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_default_and_values_parse() {
        assert_eq!(
            Limits::parse(&RawLimits::default()).unwrap(),
            Limits::default()
        );
        let l = Limits::parse(&RawLimits {
            response_header: "2.5",
            max_connections: "7",
            shutdown_grace: "0",
            ..RawLimits::default()
        })
        .unwrap();
        assert_eq!(l.response_header, Duration::from_millis(2500));
        assert_eq!(l.max_connections, 7);
        assert_eq!(l.shutdown_grace, Duration::ZERO);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(RawLimits, &str)] = &[
            (
                RawLimits {
                    response_header: "0",
                    ..Default::default()
                },
                "PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT",
            ),
            (
                RawLimits {
                    client_idle: "ten",
                    ..Default::default()
                },
                "PAUDE_PROXY_CLIENT_IDLE_TIMEOUT",
            ),
            (
                RawLimits {
                    upstream_idle: "-1",
                    ..Default::default()
                },
                "PAUDE_PROXY_UPSTREAM_IDLE_TIMEOUT",
            ),
            (
                RawLimits {
                    max_connections: "0",
                    ..Default::default()
                },
                "PAUDE_PROXY_MAX_CONNECTIONS",
            ),
            (
                RawLimits {
                    max_idle_upstream: "lots",
                    ..Default::default()
                },
                "PAUDE_PROXY_MAX_IDLE_UPSTREAM",
            ),
            (
                RawLimits {
                    shutdown_grace: "inf",
                    ..Default::default()
                },
                "PAUDE_PROXY_SHUTDOWN_GRACE",
            ),
        ];
        for (raw, var) in cases {
            let e = Limits::parse(raw).unwrap_err();
            assert_eq!(e.var, *var, "{e}");
        }
    }
}
