//! Temporal single-use tokens (SPEC §12): the JWT format ([`jwt`]), minting with a key of the
//! registry ([`mint_with`]), and the pure rules for which stored key verifies what
//! ([`key_verifies`]). Keys themselves live in [`crate::store`].

pub mod jwt;

use std::time::SystemTime;

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
