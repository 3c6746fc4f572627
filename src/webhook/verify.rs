//! Verification of pushed deliveries: GHL's signatures and replay rules, Capsule's path tokens.
//!
//! GHL (`docs/oauth/WebhookAuthentication.md` and the marketplace's webhook guide): the body is
//! signed as sent, so the signature is checked over the raw bytes, never over re-serialised
//! JSON. `X-GHL-Signature` (Ed25519, base64) is checked first; only when it is absent is the
//! legacy `X-WH-Signature` (RSASSA-PKCS1-v1_5 with SHA-256, base64) checked, since GHL retires
//! it. A present but failing Ed25519 signature is refused outright, not retried as RSA: a
//! forger must not get to pick the scheme. Then the payload's `timestamp` must be within
//! `MAX_CLOCK_SKEW` of now and its `webhookId` unseen.
//!
//! Capsule documents no signature at all: the only secret is the target URL, so each
//! subscription gets its own path token, compared in constant time, and the delivered event
//! must be the one subscribed to.
//!
//! Every refusal maps to an HTTP status and carries a message that never quotes the body.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// The largest body read: 1 MiB. GHL's event payloads are a few kilobytes; Capsule batches
/// records in one delivery, and a hundred parties with custom fields stay well below this.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How far a GHL delivery's `timestamp` may be from now, either way (GHL's doc: "e.g. 5
/// minutes"). Ahead counts too: a clock far ahead would let a captured delivery be replayed
/// after its id has left the seen-ids store.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The header of GHL's Ed25519 signature.
pub const GHL_SIGNATURE_HEADER: &str = "x-ghl-signature";
/// The header of GHL's legacy RSA signature.
pub const GHL_LEGACY_SIGNATURE_HEADER: &str = "x-wh-signature";

/// The RSA public key GHL publishes for `X-WH-Signature` (4096 bits; the SHA-256 of its DER
/// SubjectPublicKeyInfo is 2f62045d…fd25, checked by a test).
pub const GHL_RSA_PUBLIC_KEY_PEM: &str = include_str!("ghl_rsa_public_key.pem");

/// The Ed25519 public key (base64 SubjectPublicKeyInfo) reported for `X-GHL-Signature`.
/// Known from third-party sources quoting GHL's marketplace guide, not from GHL's docs
/// repository: a connection's `webhook_public_keys:` replaces it if GHL publishes another.
pub const GHL_ED25519_PUBLIC_KEY: &str = "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=";

/// The smallest RSA key accepted from configuration.
const MIN_RSA_BITS: usize = 2048;

/// A public key that may sign GHL deliveries.
#[derive(Clone)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(Box<rsa::RsaPublicKey>),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Ed25519(_) => f.write_str("PublicKey::Ed25519"),
            PublicKey::Rsa(k) => write!(f, "PublicKey::Rsa({} bits)", k.n().bits()),
        }
    }
}

impl PublicKey {
    /// Reads a key written as PEM (`BEGIN PUBLIC KEY`, or `BEGIN RSA PUBLIC KEY` for PKCS#1)
    /// or as the base64 of a DER SubjectPublicKeyInfo, Ed25519 or RSA (at least 2048 bits).
    /// The error says what is wrong without repeating the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the key is empty".into());
        }
        if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
            let key = rsa::RsaPublicKey::from_pkcs1_pem(text)
                .map_err(|e| format!("not a valid PKCS#1 RSA public key: {e}"))?;
            return Self::rsa(key);
        }
        if text.contains("-----BEGIN") {
            if !text.contains("-----BEGIN PUBLIC KEY-----") {
                return Err(
                    "expected a public key (`BEGIN PUBLIC KEY`); is this a private key or a certificate?".into()
                );
            }
            if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(text) {
                return Ok(PublicKey::Ed25519(key));
            }
            return match rsa::RsaPublicKey::from_public_key_pem(text) {
                Ok(key) => Self::rsa(key),
                Err(e) => Err(format!("not an Ed25519 or RSA public key: {e}")),
            };
        }
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let der = STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| "neither PEM nor base64 (expected a PEM block or the base64 of a SubjectPublicKeyInfo)")?;
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_der(&der) {
            return Ok(PublicKey::Ed25519(key));
        }
        match rsa::RsaPublicKey::from_public_key_der(&der) {
            Ok(key) => Self::rsa(key),
            Err(e) => Err(format!("the base64 is not an Ed25519 or RSA SubjectPublicKeyInfo: {e}")),
        }
    }

    fn rsa(key: rsa::RsaPublicKey) -> Result<Self, String> {
        let bits = key.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(format!("an RSA key of {bits} bits is too weak; at least {MIN_RSA_BITS} are needed"));
        }
        Ok(PublicKey::Rsa(Box::new(key)))
    }

    /// `ed25519` or `rsa`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "ed25519",
            PublicKey::Rsa(_) => "rsa",
        }
    }
}

/// The keys GHL deliveries are checked against, by scheme.
#[derive(Debug, Clone)]
pub struct GhlKeys {
    ed25519: Vec<ed25519_dalek::VerifyingKey>,
    rsa: Vec<rsa::pkcs1v15::VerifyingKey<Sha256>>,
}

impl GhlKeys {
    /// The keys GHL publishes: its Ed25519 key and its legacy RSA key.
    pub fn published() -> Self {
        // Both are constants of this file and parsed by a test; an error here is a build
        // defect, and an empty key set refuses every delivery rather than accepting any.
        let keys = [GHL_ED25519_PUBLIC_KEY, GHL_RSA_PUBLIC_KEY_PEM].iter().filter_map(|k| PublicKey::parse(k).ok());
        Self::from_keys(keys)
    }

    /// Exactly these keys (a connection's `webhook_public_keys:`), replacing the published
    /// ones: a sandbox or a test signs with its own.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut out = GhlKeys { ed25519: Vec::new(), rsa: Vec::new() };
        for key in keys {
            match key {
                PublicKey::Ed25519(k) => out.ed25519.push(k),
                PublicKey::Rsa(k) => out.rsa.push(rsa::pkcs1v15::VerifyingKey::new(*k)),
            }
        }
        out
    }

    /// How many keys of each scheme: (Ed25519, RSA).
    pub fn counts(&self) -> (usize, usize) {
        (self.ed25519.len(), self.rsa.len())
    }
}

/// The signature headers of one request, as received (either may be absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Signatures<'a> {
    /// `X-GHL-Signature`.
    pub ed25519: Option<&'a str>,
    /// `X-WH-Signature`.
    pub rsa: Option<&'a str>,
}

/// Which signature a delivery was accepted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ed25519,
    Rsa,
}

/// A GHL delivery that passed every check.
#[derive(Debug, Clone)]
pub struct GhlDelivery {
    /// The parsed body: the event's record.
    pub body: Value,
    /// The event name from the body's `type` (`ContactCreate`), when it has one.
    pub event: Option<String>,
    /// The delivery's id; the caller records it as seen once the event is journaled.
    pub webhook_id: String,
    pub timestamp: DateTime<Utc>,
    pub scheme: Scheme,
}

/// Why a delivery is refused. `status` is the HTTP answer; the message names the reason and
/// never quotes the body (which may hold personal data, and is the attacker's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 413: the body is over `MAX_BODY_BYTES`.
    TooLarge { size: usize, limit: usize },
    /// 400: the (authentic) body is not the JSON a delivery is.
    Malformed { reason: String },
    /// 401: no signature header at all.
    MissingSignature,
    /// 401: the signature does not verify with any configured key (or is not base64).
    BadSignature { header: &'static str },
    /// 401: `timestamp` is outside the window around now.
    Stale { timestamp: DateTime<Utc>, now: DateTime<Utc> },
    /// 401: this `webhookId` was accepted before.
    Replayed { webhook_id: String },
    /// 404: no Capsule subscription has this path token.
    UnknownHook,
    /// 401: the delivery names another event, or another hook, than the subscription.
    WrongHook { reason: String },
}

impl Refusal {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::TooLarge { .. } => 413,
            Refusal::Malformed { .. } => 400,
            Refusal::UnknownHook => 404,
            Refusal::MissingSignature
            | Refusal::BadSignature { .. }
            | Refusal::Stale { .. }
            | Refusal::Replayed { .. }
            | Refusal::WrongHook { .. } => 401,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge { size, limit } => write!(f, "body of {size} bytes is over the limit of {limit}"),
            Refusal::Malformed { reason } => write!(f, "malformed delivery: {reason}"),
            Refusal::MissingSignature => write!(
                f,
                "missing signature: neither {GHL_SIGNATURE_HEADER} nor {GHL_LEGACY_SIGNATURE_HEADER} is present"
            ),
            Refusal::BadSignature { header } => write!(f, "bad signature: {header} does not verify with any key"),
            Refusal::Stale { timestamp, now } => {
                let skew = (*now - *timestamp).num_seconds();
                let (amount, side) = if skew >= 0 { (skew, "old") } else { (-skew, "ahead") };
                write!(
                    f,
                    "stale delivery: its timestamp {} is {amount}s {side}, outside ±{}s",
                    timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    MAX_CLOCK_SKEW.as_secs()
                )
            }
            Refusal::Replayed { webhook_id } => write!(f, "replayed delivery: webhookId {webhook_id} was seen before"),
            Refusal::UnknownHook => write!(f, "no subscription has this path"),
            Refusal::WrongHook { reason } => write!(f, "delivery does not match its subscription: {reason}"),
        }
    }
}

impl std::error::Error for Refusal {}

fn check_size(body: &[u8]) -> Result<(), Refusal> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Refusal::TooLarge { size: body.len(), limit: MAX_BODY_BYTES });
    }
    Ok(())
}

/// Checks a GHL delivery: size, signature over the raw bytes, JSON, timestamp, then whether
/// `seen(webhookId)` says it was accepted before. `seen` is asked last, only for an authentic
/// and fresh delivery, so forged traffic never touches the seen-ids store.
pub fn verify_ghl(
    body: &[u8],
    signatures: Signatures<'_>,
    keys: &GhlKeys,
    now: DateTime<Utc>,
    seen: impl FnOnce(&str) -> bool,
) -> Result<GhlDelivery, Refusal> {
    check_size(body)?;
    let scheme = check_signature(body, signatures, keys)?;
    // Only authentic bytes are parsed.
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::Malformed { reason: format!("not JSON (line {}, column {})", e.line(), e.column()) })?;
    let Value::Object(fields) = &value else {
        return Err(Refusal::Malformed { reason: "the body is not a JSON object".into() });
    };
    let webhook_id = match fields.get("webhookId") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        _ => return Err(Refusal::Malformed { reason: "no `webhookId` string".into() }),
    };
    let timestamp = fields.get("timestamp").and_then(parse_timestamp).ok_or_else(|| Refusal::Malformed {
        reason: "no `timestamp` (an RFC 3339 time or epoch milliseconds)".into(),
    })?;
    let skew = (now - timestamp).abs();
    if skew.to_std().map_or(true, |s| s > MAX_CLOCK_SKEW) {
        return Err(Refusal::Stale { timestamp, now });
    }
    if seen(&webhook_id) {
        return Err(Refusal::Replayed { webhook_id });
    }
    let event = fields.get("type").and_then(Value::as_str).map(str::to_owned);
    Ok(GhlDelivery { body: value, event, webhook_id, timestamp, scheme })
}

/// Ed25519 first; the legacy RSA header only when there is no Ed25519 one.
fn check_signature(body: &[u8], signatures: Signatures<'_>, keys: &GhlKeys) -> Result<Scheme, Refusal> {
    if let Some(header) = signatures.ed25519 {
        let bad = Refusal::BadSignature { header: GHL_SIGNATURE_HEADER };
        let bytes = STANDARD.decode(header.trim()).map_err(|_| bad.clone())?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes).map_err(|_| bad.clone())?;
        // `verify_strict` also refuses small-order keys and non-canonical signatures.
        return match keys.ed25519.iter().any(|k| k.verify_strict(body, &signature).is_ok()) {
            true => Ok(Scheme::Ed25519),
            false => Err(bad),
        };
    }
    if let Some(header) = signatures.rsa {
        let bad = Refusal::BadSignature { header: GHL_LEGACY_SIGNATURE_HEADER };
        let bytes = STANDARD.decode(header.trim()).map_err(|_| bad.clone())?;
        let signature = rsa::pkcs1v15::Signature::try_from(bytes.as_slice()).map_err(|_| bad.clone())?;
        return match keys.rsa.iter().any(|k| k.verify(body, &signature).is_ok()) {
            true => Ok(Scheme::Rsa),
            false => Err(bad),
        };
    }
    Err(Refusal::MissingSignature)
}

/// GHL's doc shows an RFC 3339 string; epoch milliseconds (or seconds, for a number too small
/// to be milliseconds) are read too, since the live format is not documented beyond the example.
fn parse_timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => {
            let n = n.as_i64()?;
            if n.abs() >= 100_000_000_000 { DateTime::from_timestamp_millis(n) } else { DateTime::from_timestamp(n, 0) }
        }
        _ => None,
    }
}

/// Signs `body` the way GHL does for `X-GHL-Signature`: Ed25519 over the raw bytes, base64.
/// For the sandbox and tests, which sign with their own key.
pub fn sign_ed25519(secret: &ed25519_dalek::SigningKey, body: &[u8]) -> String {
    use ed25519_dalek::Signer as _;
    STANDARD.encode(secret.sign(body).to_bytes())
}

/// A fresh path token for a Capsule subscription: 32 random bytes, URL-safe base64 without
/// padding (43 characters). `rand::rng()` is a cryptographically secure generator seeded from
/// the operating system.
pub fn new_path_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One Capsule subscription as the listener knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleHook {
    /// The path token (`/hooks/capsule/<token>`).
    pub token: String,
    /// The event subscribed to (`party/created`).
    pub event: String,
    /// The REST hook's id in Capsule (from `POST /resthooks`), once known.
    pub hook_id: Option<String>,
}

/// A Capsule delivery that passed every check.
#[derive(Debug, Clone)]
pub struct CapsuleDelivery<'h> {
    pub hook: &'h CapsuleHook,
    pub event: String,
    /// The elements of `payload`: one record each.
    pub records: Vec<Value>,
}

/// Checks a Capsule delivery to `/hooks/capsule/<token>`: size, the token (constant time, over
/// every subscription), the body (`{"event": ..., "payload": [...]}`), the event against the
/// subscription's, and `delivered_hook_id` (when the request carries one) against the
/// subscription's id. Capsule documents no signature, so nothing else vouches for it.
pub fn verify_capsule<'h>(
    token: &str,
    body: &[u8],
    hooks: &'h [CapsuleHook],
    delivered_hook_id: Option<&str>,
) -> Result<CapsuleDelivery<'h>, Refusal> {
    check_size(body)?;
    // Every token is compared, so the time taken does not say how many matched or where.
    let mut found: Option<&CapsuleHook> = None;
    for hook in hooks {
        if bool::from(hook.token.as_bytes().ct_eq(token.as_bytes())) {
            found = Some(hook);
        }
    }
    let hook = found.ok_or(Refusal::UnknownHook)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::Malformed { reason: format!("not JSON (line {}, column {})", e.line(), e.column()) })?;
    let event = value
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::Malformed { reason: "no `event` string".into() })?
        .to_owned();
    let records = match value.get("payload") {
        Some(Value::Array(items)) => items.clone(),
        _ => return Err(Refusal::Malformed { reason: "no `payload` array".into() }),
    };
    if event != hook.event {
        return Err(Refusal::WrongHook {
            reason: format!("it names event `{event}`, the subscription is for `{}`", hook.event),
        });
    }
    if let (Some(delivered), Some(expected)) = (delivered_hook_id, &hook.hook_id)
        && delivered != expected
    {
        return Err(Refusal::WrongHook {
            reason: format!("it names hook {delivered}, the subscription is {expected}"),
        });
    }
    Ok(CapsuleDelivery { hook, event, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_keys_parse_one_of_each_scheme() {
        assert_eq!(GhlKeys::published().counts(), (1, 1));
        assert!(matches!(PublicKey::parse(GHL_RSA_PUBLIC_KEY_PEM), Ok(PublicKey::Rsa(k)) if k.n().bits() == 4096));
        assert!(matches!(PublicKey::parse(GHL_ED25519_PUBLIC_KEY), Ok(PublicKey::Ed25519(_))));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason_and_without_the_key() {
        for (text, expected) in [
            ("", "empty"),
            ("not base64 !!", "neither PEM nor base64"),
            ("aGVsbG8=", "not an Ed25519 or RSA"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "private key"),
        ] {
            let err = PublicKey::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(text.is_empty() || !err.contains(text), "{err}");
        }
    }

    #[test]
    fn a_path_token_is_43_url_safe_characters_and_never_repeats() {
        let a = new_path_token();
        let b = new_path_token();
        assert_eq!(a.len(), 43);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn timestamps_read_rfc3339_and_epoch_numbers() {
        let t = DateTime::parse_from_rfc3339("2025-06-03T14:05:51Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_timestamp(&Value::from("2025-06-03T14:05:51Z")), Some(t));
        assert_eq!(parse_timestamp(&Value::from(t.timestamp_millis())), Some(t));
        assert_eq!(parse_timestamp(&Value::from(t.timestamp())), Some(t));
        assert_eq!(parse_timestamp(&Value::from("yesterday")), None);
        assert_eq!(parse_timestamp(&Value::Bool(true)), None);
    }
}
