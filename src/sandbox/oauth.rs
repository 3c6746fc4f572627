//! OAuth tokens for both APIs: `POST /oauth/token` (form-encoded, as GHL and Capsule take
//! it) swaps a refresh token for a new access token and a rotated refresh token, and the
//! token gate refuses an issued access token once its `expires_in` has passed on the
//! sandbox clock. A refresh token is good once: the one used is spent, as GHL's rotation
//! makes it. Tokens the sandbox did not issue (private integration tokens, Capsule personal
//! tokens) are not OAuth tokens and never expire here. The first refresh token comes from
//! the control API (`POST /_sandbox/oauth/grant`), standing in for the consent screen.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{Value, json};

use super::clock::Ms;
use super::state::State;
use super::wire::Reply;

/// What an access token issued here looks like: anything else is a static token.
pub const ACCESS_PREFIX: &str = "sbx-oauth-at-";
const REFRESH_PREFIX: &str = "sbx-oauth-rt-";

/// GHL's access tokens last a day (`expires_in` 86399 in its token answers).
pub const DEFAULT_EXPIRES_IN: u64 = 86_399;

#[derive(Debug)]
pub struct OAuth {
    /// Access token → when it stops working (sandbox clock).
    access: HashMap<String, Ms>,
    /// Refresh tokens not yet used.
    refresh: HashSet<String>,
    /// The lifetime of the access tokens issued from now on, in seconds.
    pub expires_in: u64,
    issued: u64,
}

impl Default for OAuth {
    fn default() -> Self {
        OAuth { access: HashMap::new(), refresh: HashSet::new(), expires_in: DEFAULT_EXPIRES_IN, issued: 0 }
    }
}

/// A token answer, as the token endpoint and the control API give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

/// Whether a bearer token may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not issued here: a static token, accepted as before.
    Static,
    Valid,
    Expired,
    Unknown,
}

impl OAuth {
    pub fn check(&self, token: &str, now: Ms) -> Check {
        if !token.starts_with(ACCESS_PREFIX) {
            return Check::Static;
        }
        match self.access.get(token) {
            Some(until) if *until > now => Check::Valid,
            Some(_) => Check::Expired,
            None => Check::Unknown,
        }
    }

    fn issue(&mut self, now: Ms, salt: u64) -> Grant {
        self.issued += 1;
        let n = self.issued;
        let grant = Grant {
            access_token: format!("{ACCESS_PREFIX}{n}-{salt:016x}"),
            refresh_token: format!("{REFRESH_PREFIX}{n}-{:016x}", salt.rotate_left(17)),
            expires_in: self.expires_in,
        };
        let lifetime = i64::try_from(self.expires_in).unwrap_or(i64::MAX / 4).saturating_mul(1000);
        self.access.insert(grant.access_token.clone(), now.saturating_add(lifetime));
        self.refresh.insert(grant.refresh_token.clone());
        grant
    }
}

/// A new grant, as if a user had just approved the app (control API).
pub fn grant(state: &mut State) -> Grant {
    let now = state.clock.now_ms();
    let salt = state.ids.next_u64();
    state.oauth.issue(now, salt)
}

/// `POST /oauth/token`: the refresh grant. The answer carries GHL's extras (`locationId`,
/// `companyId`, `userType`) too; Capsule clients ignore them.
pub fn token(state: &mut State, form: &[(String, String)]) -> Reply {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
    let error = |status: u16, code: &str, description: &str| Reply {
        status,
        body: json!({"error": code, "error_description": description}),
        headers: Vec::new(),
    };
    if field("client_id").is_empty() || field("client_secret").is_empty() {
        return error(401, "invalid_client", "client_id and client_secret are required");
    }
    match field("grant_type") {
        "refresh_token" => {}
        "" => return error(400, "invalid_request", "grant_type is required"),
        other => {
            return error(400, "unsupported_grant_type", &format!("grant_type `{other}` is not supported here"));
        }
    }
    let used = field("refresh_token");
    if !state.oauth.refresh.remove(used) {
        return error(400, "invalid_grant", "the refresh token is invalid or was already used");
    }
    let grant = grant(state);
    let mut body = match serde_json::to_value(&grant) {
        Ok(v) => v,
        Err(e) => return error(500, "server_error", &e.to_string()),
    };
    body["token_type"] = json!("Bearer");
    body["scope"] = json!("contacts.readonly contacts.write");
    body["userType"] = json!("Location");
    body["locationId"] = Value::String(state.ghl.location_id.clone());
    body["companyId"] = Value::String(state.ghl.company_id.clone());
    Reply::ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::clock::days;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_refresh_token_works_once_and_access_tokens_expire() {
        let mut state = State::for_tests(1, 5);
        let first = grant(&mut state);
        let now = state.clock.now_ms();
        assert_eq!(state.oauth.check(&first.access_token, now), Check::Valid);
        assert_eq!(state.oauth.check("pit-static", now), Check::Static);
        assert_eq!(state.oauth.check(&format!("{ACCESS_PREFIX}forged"), now), Check::Unknown);

        let ask = |rt: &str| {
            form(&[("grant_type", "refresh_token"), ("refresh_token", rt), ("client_id", "c"), ("client_secret", "s")])
        };
        let reply = token(&mut state, &ask(&first.refresh_token));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_ne!(reply.body["refresh_token"], json!(first.refresh_token), "rotated");
        assert_eq!(reply.body["expires_in"], 86_399);
        let again = token(&mut state, &ask(&first.refresh_token));
        assert_eq!((again.status, again.body["error"].clone()), (400, json!("invalid_grant")));

        state.clock.advance(days(1));
        let later = state.clock.now_ms();
        assert_eq!(state.oauth.check(&first.access_token, later), Check::Expired);
        let missing = token(&mut state, &form(&[("grant_type", "refresh_token")]));
        assert_eq!(missing.status, 401);
    }
}
