//! Application Default Credentials JSON: the two types the proxy supports, parsed once.
//!
//! Error messages name fields and JSON positions, never values: the file holds a private
//! key or a refresh token.

use http::Uri;
use serde::Deserialize;

use crate::secret::Secret;

/// Where Google's libraries send token requests when the ADC names no `token_uri`.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

#[derive(Debug)]
pub struct Adc {
    pub kind: AdcKind,
    /// `project_id` (service account) or `quota_project_id` (authorized user).
    pub project_id: Option<String>,
}

#[derive(Debug)]
pub enum AdcKind {
    /// `"type": "service_account"`: a private key that signs JWT-bearer grants.
    ServiceAccount {
        /// The whole ADC JSON, with `token_uri` filled in, for `gcp_auth`.
        json: Secret,
        client_email: String,
        token_uri: Uri,
    },
    /// `"type": "authorized_user"` (`gcloud auth application-default login`): a refresh token.
    AuthorizedUser {
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
        token_uri: Uri,
    },
}

/// Only the fields we read; everything else in the file is ignored. No `Debug`: it holds
/// secrets as plain strings until they are wrapped.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    quota_project_id: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    token_uri: Option<String>,
}

impl Adc {
    pub fn parse(json: &str) -> Result<Adc, String> {
        // serde's messages can quote a value ("invalid type: string \"...\""), so only the
        // position is reported.
        let mut value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|_| {
            "not an ADC object: expected string fields such as type, client_email, private_key"
                .to_string()
        })?;
        let token_uri_text = raw
            .token_uri
            .clone()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        let token_uri = parse_token_uri(&token_uri_text)?;
        let required = |field: &str, v: Option<String>| {
            v.filter(|s| !s.is_empty())
                .ok_or_else(|| format!("field {field} is missing or empty"))
        };
        let kind = match raw.kind.as_deref() {
            Some("service_account") => {
                let client_email = required("client_email", raw.client_email)?;
                required("private_key", raw.private_key)?;
                // gcp_auth requires token_uri; Google's own libraries default it.
                if let Some(obj) = value.as_object_mut() {
                    obj.insert(
                        "token_uri".into(),
                        serde_json::Value::String(token_uri_text),
                    );
                }
                AdcKind::ServiceAccount {
                    json: Secret::new(value.to_string()),
                    client_email,
                    token_uri,
                }
            }
            Some("authorized_user") => AdcKind::AuthorizedUser {
                client_id: required("client_id", raw.client_id)?,
                client_secret: Secret::new(required("client_secret", raw.client_secret)?),
                refresh_token: Secret::new(required("refresh_token", raw.refresh_token)?),
                token_uri,
            },
            Some(other) => {
                return Err(format!(
                    "ADC type '{other}' is not supported (supported: service_account, authorized_user)"
                ));
            }
            None => return Err("field type is missing (service_account or authorized_user)".into()),
        };
        let project_id = match kind {
            AdcKind::ServiceAccount { .. } => raw.project_id,
            AdcKind::AuthorizedUser { .. } => raw.quota_project_id.or(raw.project_id),
        }
        .filter(|p| !p.is_empty());
        Ok(Adc { kind, project_id })
    }
}

/// Credentials travel only over verified TLS, so the token endpoint must be `https://`.
fn parse_token_uri(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("token_uri '{text}' is not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(format!(
            "token_uri '{text}' must be an https:// URL (a grant would otherwise travel in cleartext)"
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SA: &str = r#"{"type":"service_account","project_id":"p1","private_key_id":"k",
        "private_key":"-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
        "client_email":"sa@p1.iam.gserviceaccount.com","client_id":"1",
        "token_uri":"https://127.0.0.1:9/token"}"#;

    #[test]
    fn service_account_keeps_its_token_uri() {
        let adc = Adc::parse(SA).unwrap();
        assert_eq!(adc.project_id.as_deref(), Some("p1"));
        match adc.kind {
            AdcKind::ServiceAccount {
                client_email,
                token_uri,
                json,
            } => {
                assert_eq!(client_email, "sa@p1.iam.gserviceaccount.com");
                assert_eq!(token_uri.to_string(), "https://127.0.0.1:9/token");
                assert!(json.expose().contains("SECRETKEYMATERIAL"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_token_uri_defaults_to_google() {
        let json = SA.replace(r#""token_uri":"https://127.0.0.1:9/token""#, r#""x":1"#);
        let AdcKind::ServiceAccount {
            token_uri, json, ..
        } = Adc::parse(&json).unwrap().kind
        else {
            panic!("service account expected")
        };
        assert_eq!(token_uri.to_string(), DEFAULT_TOKEN_URI);
        assert!(json.expose().contains(DEFAULT_TOKEN_URI));
    }

    #[test]
    fn authorized_user() {
        let adc = Adc::parse(
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s3cr3t","refresh_token":"r3fr3sh","quota_project_id":"q"}"#,
        )
        .unwrap();
        assert_eq!(adc.project_id.as_deref(), Some("q"));
        let shown = format!("{adc:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("r3fr3sh"),
            "{shown}"
        );
    }

    #[test]
    fn errors_never_echo_values() {
        let cases = [
            (
                r#"{"type":"service_account","private_key":"KEYDATA"}"#,
                "client_email",
            ),
            (
                r#"{"type":"external_account","private_key":"KEYDATA"}"#,
                "external_account",
            ),
            (r#"{"private_key":"KEYDATA"}"#, "type is missing"),
            (r#"{"private_key":12345678,"type":"KEYDATA"#, "line 1"),
            (r#"{"private_key":["KEYDATA"]}"#, "not an ADC object"),
            (
                r#"{"type":"authorized_user","client_id":"c","client_secret":"KEYDATA","refresh_token":"x","token_uri":"http://example.com/token"}"#,
                "https://",
            ),
        ];
        for (json, want) in cases {
            let err = Adc::parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
            assert!(
                !err.contains("KEYDATA") && !err.contains("12345678"),
                "{err}"
            );
        }
    }
}
