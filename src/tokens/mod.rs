//! Temporal single-use tokens (SPEC §12): the JWT format ([`jwt`]), minting with a key of the
//! registry ([`mint_with`]), and the pure rules for which stored key verifies what
//! ([`key_verifies`]), and the replay ledger ([`ledger`]). Keys themselves live in
//! [`crate::store`].

pub mod jwt;
pub mod ledger;

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::store::{KeyEntry, Snapshot, SECRET_BYTES};

/// `DPMS_KEY_GRACE_SECS`' default: how long a rotated-out key still verifies.
pub const DEFAULT_GRACE_SECS: u64 = 300;

/// Seconds since the epoch, the clock tokens are read against.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a token is asked for: its lifetime and optional binding (SPEC §12 "Minting").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MintRequest {
    /// Seconds, 1 to [`jwt::MAX_LIFETIME`]; `None`: the longest.
    pub ttl: Option<i64>,
    pub htm: Option<String>,
    pub htu: Option<String>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("`ttl` must be 1 to {max} seconds (got {0})", max = jwt::MAX_LIFETIME)]
    BadTtl(i64),
    #[error("{0} has no signing key yet (make one with `dpms token rotate {0}`)")]
    NoKey(Uuid),
    #[error("no randomness for the token id: {0}")]
    Random(String),
    #[error("`ttl` must be 1 to {max} seconds (got {0})", max = MAX_SESSION_SECS)]
    BadSessionTtl(i64),
}

/// The longest a browser session lives (SPEC §12), and its default.
pub const MAX_SESSION_SECS: i64 = 86_400;
pub const DEFAULT_SESSION_SECS: i64 = 3_600;
/// A session's `kid` is `s.<tenant kid>.<session id>.<exp>`: all the server needs to derive
/// its key again, so sessions are stored nowhere.
const SESSION_PREFIX: &str = "s.";

/// A browser session (SPEC §12): a key the page mints its tokens with, derived from the
/// tenant's current key, valid until `exp` or the tenant key's rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub kid: String,
    /// base64url of the 32-byte key.
    pub key: String,
    pub exp: i64,
}

impl Session {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"kid": self.kid, "key": self.key, "exp": self.exp})
    }
}

/// A session for the owner of key `(kid, secret)`, `ttl` seconds from `now`.
pub fn mint_session(
    kid: &str,
    secret: &[u8; SECRET_BYTES],
    ttl: Option<i64>,
    now: i64,
) -> Result<Session, MintError> {
    let ttl = ttl.unwrap_or(DEFAULT_SESSION_SECS);
    if !(1..=MAX_SESSION_SECS).contains(&ttl) {
        return Err(MintError::BadSessionTtl(ttl));
    }
    let sid = jwt::new_jti().map_err(|e| MintError::Random(e.to_string()))?;
    let exp = now + ttl;
    Ok(Session {
        kid: format!("{SESSION_PREFIX}{kid}.{sid}.{exp}"),
        key: URL_SAFE_NO_PAD.encode(session_key(secret, &sid, exp)),
        exp,
    })
}

/// HMAC-SHA256 of the session id and expiry under the tenant's key.
fn session_key(secret: &[u8], sid: &str, exp: i64) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(b"dpms-session\0");
    mac.update(sid.as_bytes());
    mac.update(b"\0");
    mac.update(exp.to_string().as_bytes());
    mac.finalize().into_bytes().into()
}

/// The secret that verifies a token with header `kid` for `sub` at `now`: a stored key of
/// `sub` that [`key_verifies`], or a session derived from one that is current (not retired:
/// a rotation ends its sessions) and not past the session's `exp`.
pub fn secret_for(
    snapshot: &Snapshot,
    kid: &str,
    sub: Uuid,
    admin: Option<Uuid>,
    now: i64,
    grace: u64,
) -> Option<Vec<u8>> {
    let Some(rest) = kid.strip_prefix(SESSION_PREFIX) else {
        return snapshot
            .keys
            .get(kid)
            .filter(|k| key_verifies(k, sub, admin, snapshot, now, grace))
            .map(|k| k.secret.to_vec());
    };
    let mut parts = rest.split('.');
    let (Some(base), Some(sid), Some(exp), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let exp: i64 = exp.parse().ok()?;
    let entry = snapshot.keys.get(base)?;
    let usable = now < exp
        && exp.saturating_sub(now) <= MAX_SESSION_SECS
        && entry.retired.is_none()
        && key_verifies(entry, sub, admin, snapshot, now, grace);
    usable.then(|| session_key(&entry.secret, sid, exp).to_vec())
}

/// A token for `sub` signed with `(kid, secret)`, issued `now`: `(jwt, exp)`.
pub fn mint_with(
    sub: Uuid,
    kid: &str,
    secret: &[u8; SECRET_BYTES],
    ask: &MintRequest,
    now: i64,
) -> Result<(String, i64), MintError> {
    let ttl = ask.ttl.unwrap_or(jwt::MAX_LIFETIME);
    if !(1..=jwt::MAX_LIFETIME).contains(&ttl) {
        return Err(MintError::BadTtl(ttl));
    }
    let claims = jwt::Claims {
        sub: sub.to_string(),
        iat: now,
        exp: now + ttl,
        jti: jwt::new_jti().map_err(|e| MintError::Random(e.to_string()))?,
        htm: ask.htm.clone(),
        htu: ask.htu.clone(),
    };
    Ok((jwt::mint(kid, secret, &claims), claims.exp))
}

/// Whether stored key `entry` verifies a token for `sub` at `now`: it is `sub`'s, `sub` is
/// the admin or an enabled tenant (a disabled or removed tenant's keys verify nothing), and it
/// is current or was retired less than `grace` seconds ago.
pub fn key_verifies(
    entry: &KeyEntry,
    sub: Uuid,
    admin: Option<Uuid>,
    snapshot: &Snapshot,
    now: i64,
    grace: u64,
) -> bool {
    let grace = i64::try_from(grace).unwrap_or(i64::MAX);
    entry.owner == sub
        && (Some(sub) == admin || snapshot.is_enabled(&sub))
        && entry
            .retired
            .is_none_or(|at| now < at.saturating_add(grace))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;
    use crate::store::TenantEntry;

    fn snapshot(tenant: Uuid, enabled: bool) -> Snapshot {
        let mut s = Snapshot::default();
        s.tenants.insert(
            tenant,
            TenantEntry {
                userid: "t".into(),
                enabled,
                created: String::new(),
            },
        );
        s
    }

    fn key(owner: Uuid, retired: Option<i64>) -> KeyEntry {
        KeyEntry {
            owner,
            secret: [7; SECRET_BYTES],
            retired,
        }
    }

    #[test]
    fn sessions_derive_and_die_with_their_key() {
        let (t, admin) = (Uuid::new_v4(), Uuid::new_v4());
        let mut snap = snapshot(t, true);
        snap.keys.insert("k1".into(), key(t, None));
        let now = 1_000;
        let s = mint_session("k1", &[7; SECRET_BYTES], Some(600), now).unwrap();
        assert_eq!(s.exp, 1_600);
        assert!(s.kid.starts_with("s.k1.") && s.kid.ends_with(".1600"));
        let raw = URL_SAFE_NO_PAD.decode(&s.key).unwrap();
        // The server derives the same key from the kid alone.
        assert_eq!(
            secret_for(&snap, &s.kid, t, Some(admin), now, 300),
            Some(raw.clone())
        );
        assert_eq!(
            secret_for(&snap, &s.kid, t, Some(admin), 1_599, 300),
            Some(raw)
        );
        // Past exp, for another subject, with a forged exp or a retired base key: nothing.
        assert_eq!(secret_for(&snap, &s.kid, t, Some(admin), 1_600, 300), None);
        assert_eq!(
            secret_for(&snap, &s.kid, admin, Some(admin), now, 300),
            None
        );
        let later = s.kid.replace(".1600", ".1700");
        let forged = secret_for(&snap, &later, t, Some(admin), now, 300).unwrap();
        assert_ne!(URL_SAFE_NO_PAD.encode(forged), s.key);
        for bad in [
            "s.k1",
            "s.k1.x",
            "s.k1.x.1600.y",
            "s.k1.x.soon",
            "s.nokey.x.1600",
        ] {
            assert_eq!(
                secret_for(&snap, bad, t, Some(admin), now, 300),
                None,
                "{bad}"
            );
        }
        let far = format!("s.k1.x.{}", now + MAX_SESSION_SECS + 1);
        assert_eq!(secret_for(&snap, &far, t, Some(admin), now, 300), None);
        snap.keys.insert("k1".into(), key(t, Some(now)));
        assert_eq!(secret_for(&snap, &s.kid, t, Some(admin), now, 300), None);
        // A plain key still verifies in its grace.
        assert!(secret_for(&snap, "k1", t, Some(admin), now, 300).is_some());
        assert!(matches!(
            mint_session("k1", &[7; SECRET_BYTES], Some(MAX_SESSION_SECS + 1), now),
            Err(MintError::BadSessionTtl(_))
        ));
        assert!(mint_session("k1", &[7; SECRET_BYTES], Some(0), now).is_err());
    }

    #[test]
    fn which_keys_verify() {
        let (t, admin, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let on = snapshot(t, true);
        let off = snapshot(t, false);
        let now = 1_000;
        assert!(key_verifies(&key(t, None), t, Some(admin), &on, now, 300));
        // Another owner's key, a disabled or unknown tenant: never.
        assert!(!key_verifies(
            &key(other, None),
            t,
            Some(admin),
            &on,
            now,
            300
        ));
        assert!(!key_verifies(&key(t, None), t, Some(admin), &off, now, 300));
        assert!(!key_verifies(
            &key(other, None),
            other,
            Some(admin),
            &on,
            now,
            300
        ));
        // The admin is no tenant row, and still has keys.
        assert!(key_verifies(
            &key(admin, None),
            admin,
            Some(admin),
            &on,
            now,
            300
        ));
        // Retired: inside the grace, then never again.
        assert!(key_verifies(
            &key(t, Some(now - 299)),
            t,
            None,
            &on,
            now,
            300
        ));
        assert!(!key_verifies(
            &key(t, Some(now - 300)),
            t,
            None,
            &on,
            now,
            300
        ));
        assert!(!key_verifies(&key(t, Some(now)), t, None, &on, now, 0));
    }

    #[test]
    fn minted_tokens_verify_and_ttl_is_bounded() {
        let sub = Uuid::new_v4();
        let secret = [9u8; SECRET_BYTES];
        let ask = MintRequest {
            ttl: Some(30),
            htm: Some("GET".into()),
            htu: Some("/rest/services/x/".into()),
        };
        let (token, exp) = mint_with(sub, "k1", &secret, &ask, 100).unwrap();
        assert_eq!(exp, 130);
        let sub_s = sub.to_string();
        let target = jwt::Target {
            sub: &sub_s,
            method: "GET",
            path: "/rest/services/x",
        };
        let claims = jwt::verify(
            &token,
            |k| (k == "k1").then(|| secret.to_vec()),
            target,
            100,
        );
        assert_eq!(claims.unwrap().exp, 130);
        for bad in [0, -1, 61] {
            let ask = MintRequest {
                ttl: Some(bad),
                ..MintRequest::default()
            };
            assert!(matches!(
                mint_with(sub, "k1", &secret, &ask, 100),
                Err(MintError::BadTtl(_))
            ));
        }
        assert_eq!(
            mint_with(sub, "k1", &secret, &MintRequest::default(), 100)
                .unwrap()
                .1,
            160
        );
    }
}
