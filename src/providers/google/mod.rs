//! Google Cloud: the agent holds a stub Application Default Credentials file, the proxy
//! holds the real one.
//!
//! - [`adc`] reads the real ADC (`GCP_ADC_JSON` inline, else the `GOOGLE_APPLICATION_CREDENTIALS`
//!   path) once at startup;
//! - [`fetch`] turns it into access tokens (`gcp_auth` for service accounts), which the
//!   neutral [`crate::credential::TokenSource`] caches and refreshes;
//! - [`vend`] answers the agent's own OAuth token requests with a placeholder;
//! - [`metadata`] emulates the GCE metadata server for clients that ask it directly;
//! - [`stub`] is the ADC file the agent holds.

pub mod adc;
pub mod fetch;
pub mod metadata;
pub mod stub;
pub mod vend;

use std::fmt;
use std::sync::Arc;

pub use crate::credential::PLACEHOLDER_TOKEN;
use crate::credential::{Holds, Source, TokenSource};
use crate::providers::google::adc::{Adc, AdcKind};
use crate::providers::{Kind, Loaded};

/// The routing table's name for this provider.
pub const KIND: Kind = Kind {
    name: "gcloud",
    holds: Holds::Path,
    also_reads: &[INLINE_ADC_VAR],
    load,
};

/// Token sources name whose tokens they hold in their log lines and errors.
const LABEL: &str = "Google";

/// The scope requested for service-account tokens: what Vertex AI and most APIs need.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Inline ADC JSON; wins over the `GOOGLE_APPLICATION_CREDENTIALS` path when both are set.
pub const INLINE_ADC_VAR: &str = "GCP_ADC_JSON";

/// A configured Google credential: its token source plus what the metadata emulation may
/// reveal (the project id; never a key, a refresh token or an access token).
pub struct GcloudCredential {
    /// Where the ADC came from, for log lines: a variable name and maybe a path.
    pub origin: String,
    pub project_id: Option<String>,
    /// `service account <email>` or `authorized user`: no secret.
    pub account: String,
    pub tokens: Arc<TokenSource>,
}

impl fmt::Debug for GcloudCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcloudCredential")
            .field("origin", &self.origin)
            .field("project_id", &self.project_id)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl GcloudCredential {
    /// Reads the ADC for a `gcloud` route whose variable is `env_var` (normally
    /// `GOOGLE_APPLICATION_CREDENTIALS`, a path). `Ok(None)`: nothing is set, the route is
    /// skipped like any other route without its credential. Errors never contain the ADC's
    /// content.
    pub fn from_env(
        env_var: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<GcloudCredential>, String> {
        let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let (json, origin) = if let Some(inline) = set(INLINE_ADC_VAR) {
            (inline, INLINE_ADC_VAR.to_string())
        } else if let Some(path) = set(env_var) {
            let json = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the ADC file {path}: {e}"))?;
            (json, format!("{env_var}={path}"))
        } else {
            return Ok(None);
        };
        let adc = Adc::parse(&json).map_err(|e| format!("{origin}: {e}"))?;
        Self::from_adc(adc, origin).map(Some)
    }

    pub fn from_adc(adc: Adc, origin: String) -> Result<GcloudCredential, String> {
        let account = match &adc.kind {
            AdcKind::ServiceAccount { client_email, .. } => {
                format!("service account {client_email}")
            }
            AdcKind::AuthorizedUser { .. } => "authorized user".to_string(),
        };
        let fetcher = fetch::for_adc(&adc).map_err(|e| format!("{origin}: {e}"))?;
        Ok(GcloudCredential {
            origin,
            project_id: adc.project_id.clone(),
            account,
            tokens: Arc::new(TokenSource::new(LABEL, fetcher)),
        })
    }

    /// One line for the startup log.
    pub fn summary(&self) -> String {
        format!(
            "gcloud credential from {}: {}, project {}, token endpoint {}",
            self.origin,
            self.account,
            self.project_id.as_deref().unwrap_or("unknown"),
            self.tokens.endpoint()
        )
    }
}

/// The provider's loader: the token source for the routes, and two vendors (token
/// vending, the metadata server).
fn load(env_var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Loaded>, String> {
    let Some(credential) = GcloudCredential::from_env(env_var, env)? else {
        return Ok(None);
    };
    let credential = Arc::new(credential);
    Ok(Some(Loaded {
        source: Source::Refreshing(credential.tokens.clone()),
        summary: credential.summary(),
        vendors: vec![
            Arc::new(vend::TokenVendor),
            Arc::new(metadata::MetadataServer {
                project_id: credential.project_id.clone(),
            }),
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_set_skips_the_route() {
        let got = GcloudCredential::from_env("GOOGLE_APPLICATION_CREDENTIALS", &|_| None).unwrap();
        assert!(got.is_none());
        let blank =
            GcloudCredential::from_env("GOOGLE_APPLICATION_CREDENTIALS", &|_| Some("  ".into()))
                .unwrap();
        assert!(blank.is_none());
    }

    #[test]
    fn unreadable_file_names_the_path_not_the_content() {
        let err = GcloudCredential::from_env("GOOGLE_APPLICATION_CREDENTIALS", &|k| {
            (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| "/nonexistent/adc.json".into())
        })
        .unwrap_err();
        assert!(err.contains("/nonexistent/adc.json"), "{err}");
    }

    #[test]
    fn the_default_table_routes_googleapis_to_the_gcloud_credential() {
        use crate::host::Host;
        use crate::inject::{DEFAULT_CREDENTIALS_JSON, Routes};
        use http::header::{AUTHORIZATION, HeaderMap};

        let inline = r#"{"type":"authorized_user","client_id":"c","client_secret":"csecret-value","refresh_token":"rtoken-value"}"#;
        let routes = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &|k| {
            (k == INLINE_ADC_VAR).then(|| inline.to_string())
        })
        .unwrap();
        assert_eq!(routes.vendors.iter().count(), 2);
        let h = |s: &str| Host::parse(s).unwrap();
        let find = |host: &str| {
            routes
                .select(&h(host), &http::Method::POST, "/v1/x", &HeaderMap::new())
                .map(|r| (r.kind.clone(), r.refreshes(), r.injector.header.clone()))
        };
        assert_eq!(
            find("us-central1-aiplatform.googleapis.com"),
            Some(("gcloud".to_string(), true, AUTHORIZATION))
        );
        assert!(find("googleapis.com.evil.com").is_none());

        let none = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &|_| None).unwrap();
        assert_eq!(none.vendors.iter().count(), 0);
    }

    #[test]
    fn inline_wins_over_the_path() {
        let inline = r#"{"type":"authorized_user","client_id":"cid","client_secret":"csecret-value","refresh_token":"rtoken-value","quota_project_id":"inline-project"}"#;
        let got = GcloudCredential::from_env("GOOGLE_APPLICATION_CREDENTIALS", &|k| match k {
            "GCP_ADC_JSON" => Some(inline.into()),
            "GOOGLE_APPLICATION_CREDENTIALS" => Some("/nonexistent/adc.json".into()),
            _ => None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(got.origin, "GCP_ADC_JSON");
        assert_eq!(got.project_id.as_deref(), Some("inline-project"));
        let shown = format!("{got:?} {}", got.summary());
        assert!(!shown.contains("csecret-value") && !shown.contains("rtoken-value"));
    }
}
