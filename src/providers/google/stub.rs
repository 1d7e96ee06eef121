//! The stub ADC the agent holds (`paude-proxy stub-adc`). An `authorized_user` file needs
//! no key material: the libraries post its placeholder refresh token to Google's token
//! endpoint, the proxy vends a placeholder access token, and the real token is injected
//! on the way to `*.googleapis.com`. No project is named, so no library adds a quota
//! project header that the real credential may not be allowed to use.

use crate::credential::PLACEHOLDER_TOKEN;

/// The stub ADC JSON, pretty-printed, with a trailing newline.
pub fn json() -> String {
    let stub = serde_json::json!({
        "type": "authorized_user",
        "client_id": PLACEHOLDER_TOKEN,
        "client_secret": PLACEHOLDER_TOKEN,
        "refresh_token": PLACEHOLDER_TOKEN,
        "universe_domain": "googleapis.com",
    });
    let mut text = serde_json::to_string_pretty(&stub).unwrap_or_else(|_| stub.to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::google::adc::{Adc, AdcKind};

    #[test]
    fn the_stub_is_a_valid_authorized_user_adc_of_placeholders() {
        let adc = Adc::parse(&json()).unwrap();
        assert!(matches!(adc.kind, AdcKind::AuthorizedUser { .. }));
        assert!(adc.project_id.is_none());
        let v: serde_json::Value = serde_json::from_str(&json()).unwrap();
        for field in ["client_id", "client_secret", "refresh_token"] {
            assert_eq!(v[field], PLACEHOLDER_TOKEN);
        }
    }
}
