//! Pushed deliveries are checked before anything runs: GHL bodies signed by known keys (fixed
//! bytes signed once with OpenSSL, see tests/fixtures/webhook/README.md) verify with Ed25519
//! and with the legacy RSA scheme; forged, wrongly keyed, stale, replayed, oversized and
//! malformed ones are refused with the right status and without the body in the message.
//! Capsule deliveries are accepted only on their subscription's path token and event.

use std::cell::Cell;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use ghlflow::webhook::{
    self, CapsuleHook, GhlKeys, MAX_BODY_BYTES, PublicKey, Refusal, Scheme, Signatures, verify_capsule, verify_ghl,
};
use sha2::{Digest, Sha256};

const DIR: &str = "tests/fixtures/webhook";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(DIR).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text(name: &str) -> String {
    String::from_utf8(read(name)).unwrap()
}

fn key(name: &str) -> PublicKey {
    PublicKey::parse(&text(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The test key pair's public halves, as a connection's `webhook_public_keys` would give them.
fn test_keys() -> GhlKeys {
    GhlKeys::from_keys([key("ed25519.pub.pem"), key("rsa.pub.pem")])
}

/// The fixture's own `timestamp` plus a minute: inside the window.
fn fresh_now() -> DateTime<Utc> {
    "2025-06-03T14:06:51Z".parse().unwrap()
}

fn ed25519(sig: &str) -> Signatures<'_> {
    Signatures { ed25519: Some(sig), rsa: None }
}

fn rsa(sig: &str) -> Signatures<'_> {
    Signatures { ed25519: None, rsa: Some(sig) }
}

/// The test Ed25519 key pair's private half.
fn secret() -> ed25519_dalek::SigningKey {
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    ed25519_dalek::SigningKey::from_pkcs8_pem(&text("ed25519.key.pem")).unwrap()
}

fn never_seen(_: &str) -> bool {
    false
}

#[test]
fn a_body_signed_with_the_ed25519_key_verifies_and_yields_its_webhook_id() {
    let body = read("contact_create.json");
    let sig = text("contact_create.json.ed25519.sig");
    let asked = Cell::new(None);
    let ok = verify_ghl(&body, ed25519(&sig), &test_keys(), fresh_now(), |id| {
        asked.set(Some(id.to_owned()));
        false
    })
    .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(ok.scheme, Scheme::Ed25519);
    assert_eq!(ok.webhook_id, "c5a0e2f4-7d1b-4f3e-9a6c-2b8d0e1f4a77");
    assert_eq!(asked.take().as_deref(), Some("c5a0e2f4-7d1b-4f3e-9a6c-2b8d0e1f4a77"), "the seen check got the id");
    assert_eq!(ok.event.as_deref(), Some("ContactCreate"));
    assert_eq!(ok.body["firstName"], "Renée");
    assert_eq!(ok.timestamp, "2025-06-03T14:05:51Z".parse::<DateTime<Utc>>().unwrap());
}

#[test]
fn a_body_signed_with_the_legacy_rsa_key_verifies_when_there_is_no_ed25519_header() {
    let body = read("contact_create.json");
    let sig = text("contact_create.json.rsa.sig");
    let ok = verify_ghl(&body, rsa(&sig), &test_keys(), fresh_now(), never_seen).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(ok.scheme, Scheme::Rsa);
}

#[test]
fn ed25519_is_checked_first_and_a_failing_one_is_not_rescued_by_rsa() {
    let body = read("contact_create.json");
    let rsa_sig = text("contact_create.json.rsa.sig");
    let bad_ed = text("malformed.json.ed25519.sig"); // a valid signature, of other bytes
    let both = Signatures { ed25519: Some(&bad_ed), rsa: Some(&rsa_sig) };
    let err = verify_ghl(&body, both, &test_keys(), fresh_now(), never_seen).unwrap_err();
    assert_eq!(err, Refusal::BadSignature { header: "x-ghl-signature" });
    assert_eq!(err.status(), 401);
    // With a good Ed25519 signature the (good) RSA one is not needed, and a bad one is ignored.
    let good_ed = text("contact_create.json.ed25519.sig");
    let both = Signatures { ed25519: Some(&good_ed), rsa: Some("AAAA") };
    assert_eq!(verify_ghl(&body, both, &test_keys(), fresh_now(), never_seen).unwrap().scheme, Scheme::Ed25519);
}

#[test]
fn a_forged_body_one_byte_changed_is_refused_for_both_schemes() {
    let mut body = read("contact_create.json");
    let at = body.windows(3).position(|w| w == b"vip").unwrap();
    body[at] = b'V';
    for (sigs, header) in [
        (ed25519(&text("contact_create.json.ed25519.sig")), "x-ghl-signature"),
        (rsa(&text("contact_create.json.rsa.sig")), "x-wh-signature"),
    ] {
        let seen_asked = Cell::new(false);
        let err = verify_ghl(&body, sigs, &test_keys(), fresh_now(), |_| {
            seen_asked.set(true);
            false
        })
        .unwrap_err();
        assert_eq!(err, Refusal::BadSignature { header });
        assert_eq!(err.status(), 401);
        assert!(!seen_asked.get(), "forged traffic never reaches the seen-ids store");
        let message = err.to_string();
        assert!(message.contains("bad signature") && !message.contains("Renée") && !message.contains("VIP"));
    }
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let body = read("contact_create.json");
    let sig = text("contact_create.json.ed25519.sig");
    let other = GhlKeys::from_keys([key("other_ed25519.pub.pem")]);
    assert_eq!(
        verify_ghl(&body, ed25519(&sig), &other, fresh_now(), never_seen).unwrap_err(),
        Refusal::BadSignature { header: "x-ghl-signature" }
    );
    // GHL's published keys did not sign the fixtures either.
    let published = GhlKeys::published();
    let rsa_sig = text("contact_create.json.rsa.sig");
    assert_eq!(
        verify_ghl(&body, rsa(&rsa_sig), &published, fresh_now(), never_seen).unwrap_err(),
        Refusal::BadSignature { header: "x-wh-signature" }
    );
    // A key set without RSA keys refuses every legacy signature.
    let ed_only = GhlKeys::from_keys([key("ed25519.pub.pem")]);
    assert!(verify_ghl(&body, rsa(&rsa_sig), &ed_only, fresh_now(), never_seen).is_err());
}

#[test]
fn a_missing_or_garbled_signature_is_refused_with_401() {
    let body = read("contact_create.json");
    let err = verify_ghl(&body, Signatures::default(), &test_keys(), fresh_now(), never_seen).unwrap_err();
    assert_eq!((err.clone(), err.status()), (Refusal::MissingSignature, 401));
    assert!(err.to_string().contains("missing signature"), "{err}");
    for garbled in ["", "not base64!", "AAAA", &"A".repeat(88)] {
        let err = verify_ghl(&body, ed25519(garbled), &test_keys(), fresh_now(), never_seen).unwrap_err();
        assert_eq!(err, Refusal::BadSignature { header: "x-ghl-signature" }, "{garbled:?}");
        let err = verify_ghl(&body, rsa(garbled), &test_keys(), fresh_now(), never_seen).unwrap_err();
        assert_eq!(err, Refusal::BadSignature { header: "x-wh-signature" }, "{garbled:?}");
    }
}

#[test]
fn a_timestamp_outside_five_minutes_either_way_is_stale() {
    let body = read("contact_create.json");
    let sig = text("contact_create.json.ed25519.sig");
    let sent: DateTime<Utc> = "2025-06-03T14:05:51Z".parse().unwrap();
    for (now, ok) in [
        (sent + Duration::minutes(5), true),
        (sent - Duration::minutes(5), true),
        (sent + Duration::minutes(5) + Duration::seconds(1), false),
        (sent - Duration::minutes(5) - Duration::seconds(1), false),
        (sent + Duration::hours(3), false),
    ] {
        let result = verify_ghl(&body, ed25519(&sig), &test_keys(), now, never_seen);
        match (ok, result) {
            (true, Ok(_)) => {}
            (false, Err(err @ Refusal::Stale { .. })) => {
                assert_eq!(err.status(), 401);
                assert!(err.to_string().starts_with("stale delivery"), "{err}");
            }
            (ok, other) => panic!("now {now}: expected ok={ok}, got {other:?}"),
        }
    }
}

#[test]
fn a_seen_webhook_id_is_a_replay() {
    let body = read("contact_create.json");
    let sig = text("contact_create.json.ed25519.sig");
    let mut seen = std::collections::HashSet::new();
    let first = verify_ghl(&body, ed25519(&sig), &test_keys(), fresh_now(), |id| seen.contains(id)).unwrap();
    // The listener records the id once the event is journaled.
    seen.insert(first.webhook_id.clone());
    let err = verify_ghl(&body, ed25519(&sig), &test_keys(), fresh_now(), |id| seen.contains(id)).unwrap_err();
    assert_eq!(err, Refusal::Replayed { webhook_id: first.webhook_id });
    assert_eq!(err.status(), 401);
    assert!(err.to_string().contains("replayed"), "{err}");
}

#[test]
fn an_oversized_body_is_refused_with_413_before_its_signature_is_checked() {
    let mut body = read("contact_create.json");
    body.resize(MAX_BODY_BYTES + 1, b' ');
    let err = verify_ghl(&body, Signatures::default(), &test_keys(), fresh_now(), never_seen).unwrap_err();
    assert_eq!(err, Refusal::TooLarge { size: MAX_BODY_BYTES + 1, limit: MAX_BODY_BYTES });
    assert_eq!(err.status(), 413);
    // At the bound exactly, the size is fine (and the padding breaks the signature).
    body.truncate(MAX_BODY_BYTES);
    let sig = text("contact_create.json.ed25519.sig");
    assert_eq!(verify_ghl(&body, ed25519(&sig), &test_keys(), fresh_now(), never_seen).unwrap_err().status(), 401);
}

#[test]
fn an_authentic_body_that_is_not_a_delivery_is_malformed_with_400() {
    let body = read("malformed.json");
    for sigs in [ed25519(&text("malformed.json.ed25519.sig")), rsa(&text("malformed.json.rsa.sig"))] {
        let err = verify_ghl(&body, sigs, &test_keys(), fresh_now(), never_seen).unwrap_err();
        assert!(matches!(err, Refusal::Malformed { .. }), "{err:?}");
        assert_eq!(err.status(), 400);
        let message = err.to_string();
        assert!(message.contains("not JSON"), "{message}");
        assert!(!message.contains("ve9EPM428h8vShlRW1KT"), "the body stays out of the message: {message}");
    }
}

#[test]
fn deliveries_without_webhook_id_or_timestamp_are_malformed() {
    // Signed here with the test key, so only the content is wrong.
    let secret = secret();
    for (body, missing) in [
        (r#"{"type":"ContactCreate","timestamp":"2025-06-03T14:05:51Z"}"#, "webhookId"),
        (r#"{"type":"ContactCreate","webhookId":"w1"}"#, "timestamp"),
        (r#"{"type":"ContactCreate","webhookId":"w1","timestamp":"last tuesday"}"#, "timestamp"),
        (r#"["ContactCreate"]"#, "not a JSON object"),
    ] {
        let sig = webhook::sign_ed25519(&secret, body.as_bytes());
        let err = verify_ghl(body.as_bytes(), ed25519(&sig), &test_keys(), fresh_now(), never_seen).unwrap_err();
        assert_eq!(err.status(), 400, "{body}");
        assert!(err.to_string().contains(missing), "{err}");
    }
}

#[test]
fn sign_ed25519_makes_the_header_the_verifier_accepts_and_matches_openssl() {
    let secret = secret();
    let body = read("contact_create.json");
    // Ed25519 is deterministic: the same bytes OpenSSL made.
    assert_eq!(webhook::sign_ed25519(&secret, &body), text("contact_create.json.ed25519.sig").trim());
    let body = br#"{"type":"NoteCreate","id":"n1","webhookId":"w-note","timestamp":"2025-06-03T14:06:00Z"}"#;
    let sig = webhook::sign_ed25519(&secret, body);
    let ok = verify_ghl(body, ed25519(&sig), &test_keys(), fresh_now(), never_seen).unwrap();
    assert_eq!(ok.event.as_deref(), Some("NoteCreate"));
}

#[test]
fn the_published_rsa_key_is_the_one_in_ghls_doc() {
    // ghl-api-facts.md §4.5: SHA-256 of the DER SubjectPublicKeyInfo.
    let pem = webhook::verify::GHL_RSA_PUBLIC_KEY_PEM;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&der)), "2f62045d413b1b7747e26770ce7f57840cbf86288cd20ceb90d299a62501fd25");
    assert!(pem.contains("MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcf"));
    assert!(matches!(PublicKey::parse(webhook::verify::GHL_ED25519_PUBLIC_KEY), Ok(PublicKey::Ed25519(_))));
}

#[test]
fn keys_are_read_as_pem_or_base64_spki() {
    let pem = text("ed25519.pub.pem");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(PublicKey::parse(&b64).unwrap().algorithm(), "ed25519");
    assert_eq!(key("rsa.pub.pem").algorithm(), "rsa");
    let err = PublicKey::parse(&text("rsa.key.pem")).unwrap_err();
    assert!(err.contains("private key"), "{err}");
    assert!(!err.contains("MII"), "the key text stays out of the message: {err}");
}

fn hooks() -> Vec<CapsuleHook> {
    vec![
        CapsuleHook { token: webhook::new_path_token(), event: "party/created".into(), hook_id: Some("100".into()) },
        CapsuleHook { token: webhook::new_path_token(), event: "party/updated".into(), hook_id: None },
    ]
}

const PARTY_UPDATED: &str = r#"{"event":"party/updated","payload":[{"id":11587,"type":"person","firstName":"Scott","updatedAt":"2025-06-03T14:05:51Z"},{"id":11588,"type":"organisation","name":"Capsule"}]}"#;

#[test]
fn a_capsule_delivery_on_its_token_yields_each_payload_record() {
    let hooks = hooks();
    let ok = verify_capsule(&hooks[1].token, PARTY_UPDATED.as_bytes(), &hooks, None).unwrap();
    assert_eq!(ok.hook, &hooks[1]);
    assert_eq!(ok.event, "party/updated");
    let ids: Vec<i64> = ok.records.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [11587, 11588]);
}

#[test]
fn a_capsule_delivery_on_an_unknown_token_or_for_another_event_is_refused() {
    let hooks = hooks();
    let err = verify_capsule(&webhook::new_path_token(), PARTY_UPDATED.as_bytes(), &hooks, None).unwrap_err();
    assert_eq!((err.clone(), err.status()), (Refusal::UnknownHook, 404));
    // A token that is a prefix of a real one is not a match.
    let err = verify_capsule(&hooks[1].token[..20], PARTY_UPDATED.as_bytes(), &hooks, None).unwrap_err();
    assert_eq!(err, Refusal::UnknownHook);
    // The party/created subscription's path, with a party/updated body.
    let err = verify_capsule(&hooks[0].token, PARTY_UPDATED.as_bytes(), &hooks, None).unwrap_err();
    assert!(matches!(&err, Refusal::WrongHook { reason } if reason.contains("party/updated")), "{err:?}");
    assert_eq!(err.status(), 401);
}

#[test]
fn a_capsule_hook_id_is_checked_when_the_delivery_names_one() {
    let hooks = hooks();
    let body = PARTY_UPDATED.replace("party/updated", "party/created");
    assert!(verify_capsule(&hooks[0].token, body.as_bytes(), &hooks, Some("100")).is_ok());
    assert!(verify_capsule(&hooks[0].token, body.as_bytes(), &hooks, None).is_ok());
    let err = verify_capsule(&hooks[0].token, body.as_bytes(), &hooks, Some("101")).unwrap_err();
    assert!(matches!(&err, Refusal::WrongHook { reason } if reason.contains("101")), "{err:?}");
}

#[test]
fn capsule_bodies_are_bounded_and_must_be_event_and_payload() {
    let hooks = hooks();
    let token = &hooks[1].token;
    let big = format!("{{\"event\":\"party/updated\",\"payload\":[\"{}\"]}}", "x".repeat(MAX_BODY_BYTES));
    assert_eq!(verify_capsule(token, big.as_bytes(), &hooks, None).unwrap_err().status(), 413);
    for (body, reason) in [
        ("{\"event\":\"party/updated\",", "not JSON"),
        ("{\"payload\":[]}", "event"),
        ("{\"event\":\"party/updated\",\"payload\":{\"id\":1}}", "payload"),
    ] {
        let err = verify_capsule(token, body.as_bytes(), &hooks, None).unwrap_err();
        assert_eq!(err.status(), 400, "{body}");
        assert!(err.to_string().contains(reason), "{err}");
    }
}
