//! The token format (SPEC §12): a compact JWT (RFC 7519), `alg` `HS256` only, header `kid`,
//! claims `sub`, `iat`, `exp`, `jti`, optional `htm`/`htu`. Pure: the keys and the clock are
//! passed in, so every rejection has a unit test. The MAC is checked with `hmac`'s
//! constant-time `verify_slice` before any claim is believed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The longest lifetime a token may claim (`exp - iat`), in seconds.
pub const MAX_LIFETIME: i64 = 60;
/// Clock skew allowed on `iat` (in the future) and `exp` (in the past), in seconds.
pub const SKEW: i64 = 5;
/// The longest token read; a JWT with these claims is a few hundred bytes.
const MAX_TOKEN: usize = 4096;
/// Fewest bytes of randomness in a `jti`.
const MIN_JTI_BYTES: usize = 16;

/// Why a token is refused. Only ever logged: every client sees one 401 (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a compact JWT")]
    Malformed,
    #[error("alg is not HS256")]
    Algorithm,
    #[error("unknown kid")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("sub is not this caller")]
    Subject,
    #[error("expired")]
    Expired,
    #[error("issued in the future")]
    NotYetValid,
    #[error("lifetime over {MAX_LIFETIME} s")]
    TooLong,
    #[error("htm does not match the method")]
    Method,
    #[error("htu does not match the path")]
    Path,
    #[error("jti too short")]
    Jti,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    kid: String,
}

/// The claims dpms reads (others are ignored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htu: Option<String>,
}

/// What the request is, for the claims that bind a token to it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The uuid in the URL (the admin API: the admin's), hyphenated lower case.
    pub sub: &'a str,
    pub method: &'a str,
    /// The request's path, without the query.
    pub path: &'a str,
}

/// Checks `token` against `target` at `now` (unix seconds). `key_for(kid)` gives the secret
/// of a key of `target.sub` that verifies now (current, or retired within its grace), or
/// `None`. On success the claims are returned: single use is the caller's (the ledger).
pub fn verify(
    token: &str,
    key_for: impl Fn(&str) -> Option<Vec<u8>>,
    target: Target<'_>,
    now: i64,
) -> Result<Claims, Invalid> {
    if token.len() > MAX_TOKEN {
        return Err(Invalid::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::Malformed);
    };
    let header: Header = decode_json(head)?;
    if header.alg != "HS256" {
        return Err(Invalid::Algorithm);
    }
    let secret = key_for(&header.kid).ok_or(Invalid::UnknownKey)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| Invalid::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(&secret).map_err(|_| Invalid::UnknownKey)?;
    mac.update(head.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.verify_slice(&sig).map_err(|_| Invalid::Signature)?;
    let claims: Claims = decode_json(body)?;
    if claims.sub != target.sub {
        return Err(Invalid::Subject);
    }
    if claims.exp.saturating_sub(claims.iat) > MAX_LIFETIME || claims.exp < claims.iat {
        return Err(Invalid::TooLong);
    }
    if claims.iat > now.saturating_add(SKEW) {
        return Err(Invalid::NotYetValid);
    }
    if claims.exp <= now.saturating_sub(SKEW) {
        return Err(Invalid::Expired);
    }
    if let Some(htm) = &claims.htm {
        if !htm.eq_ignore_ascii_case(target.method) {
            return Err(Invalid::Method);
        }
    }
    if let Some(htu) = &claims.htu {
        if !same_path(htu, target.path) {
            return Err(Invalid::Path);
        }
    }
    if URL_SAFE_NO_PAD
        .decode(&claims.jti)
        .map_or(true, |b| b.len() < MIN_JTI_BYTES)
    {
        return Err(Invalid::Jti);
    }
    Ok(claims)
}

/// `htu` may be a full URL (RFC 9449) or a path; only its path is compared, a trailing slash
/// aside (dpms answers a path with and without one alike).
fn same_path(htu: &str, path: &str) -> bool {
    let htu = match htu.find("://") {
        Some(i) => htu[i + 3..].find('/').map_or("/", |j| &htu[i + 3 + j..]),
        None => htu,
    };
    let htu = htu.split(['?', '#']).next().unwrap_or("");
    htu.trim_end_matches('/') == path.trim_end_matches('/')
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, Invalid> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Invalid::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Invalid::Malformed)
}

/// A new `jti`: 16 random bytes, base64url.
pub fn new_jti() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; MIN_JTI_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Signs `claims` with `secret` under `kid`.
pub fn mint(kid: &str, secret: &[u8], claims: &Claims) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
        kid: kid.into(),
    };
    // Serialising these plain structs cannot fail.
    let head = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing = format!("{head}.{body}");
    let sig = match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("{signing}.{sig}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SUB: &str = "0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11";
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            sub: SUB.into(),
            iat: NOW,
            exp: NOW + 60,
            jti: new_jti().unwrap(),
            htm: None,
            htu: None,
        }
    }

    fn target() -> Target<'static> {
        Target {
            sub: SUB,
            method: "GET",
            path: "/rest/services/0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11/hello/",
        }
    }

    fn keys(kid: &str) -> Option<Vec<u8>> {
        (kid == "k1").then(|| SECRET.to_vec())
    }

    fn check(token: &str) -> Result<Claims, Invalid> {
        verify(token, keys, target(), NOW)
    }

    fn b64(v: serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
    }

    /// A token with this header, signed properly with SECRET.
    fn with_header(header: serde_json::Value, c: &Claims) -> String {
        let signing = format!("{}.{}", b64(header), b64(serde_json::to_value(c).unwrap()));
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(signing.as_bytes());
        format!(
            "{signing}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn a_good_token_verifies() {
        let c = claims();
        assert_eq!(check(&mint("k1", SECRET, &c)), Ok(c));
    }

    #[test]
    fn malformed_tokens() {
        for t in ["", "a", "a.b", "a.b.c.d", "!!.??.**", &"a".repeat(5000)] {
            assert_eq!(check(t), Err(Invalid::Malformed), "{t}");
        }
    }

    #[test]
    fn only_hs256() {
        let c = claims();
        for alg in ["none", "RS256", "HS512", "hs256"] {
            let t = with_header(serde_json::json!({"alg": alg, "kid": "k1"}), &c);
            assert_eq!(check(&t), Err(Invalid::Algorithm), "{alg}");
        }
        // alg none with an empty signature, the classic.
        let t = format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none", "kid": "k1"})),
            b64(serde_json::to_value(&c).unwrap())
        );
        assert_eq!(check(&t), Err(Invalid::Algorithm));
    }

    #[test]
    fn flipped_bytes_and_unknown_keys() {
        let t = mint("k1", SECRET, &claims());
        let parts: Vec<&str> = t.split('.').collect();
        // A payload changed after signing (another sub, same length).
        let other = Claims {
            sub: SUB.replace('0', "1"),
            ..claims()
        };
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(serde_json::to_value(&other).unwrap()),
            parts[2]
        );
        assert_eq!(check(&forged), Err(Invalid::Signature));
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[0] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(check(&flipped), Err(Invalid::Signature));
        assert_eq!(
            check(&mint("k2", SECRET, &claims())),
            Err(Invalid::UnknownKey)
        );
        assert_eq!(
            check(&mint("k1", b"another key of thirty-two bytes!", &claims())),
            Err(Invalid::Signature)
        );
    }

    #[test]
    fn claims_are_checked() {
        let cases = [
            (
                Claims {
                    sub: "another".into(),
                    ..claims()
                },
                Invalid::Subject,
            ),
            (
                Claims {
                    iat: NOW - 70,
                    exp: NOW - 10,
                    ..claims()
                },
                Invalid::Expired,
            ),
            (
                Claims {
                    iat: NOW + 10,
                    exp: NOW + 20,
                    ..claims()
                },
                Invalid::NotYetValid,
            ),
            (
                Claims {
                    exp: NOW + 61,
                    ..claims()
                },
                Invalid::TooLong,
            ),
            // Extreme values signed by a key holder: refused, no overflow.
            (
                Claims {
                    iat: i64::MIN,
                    exp: i64::MAX,
                    ..claims()
                },
                Invalid::TooLong,
            ),
            (
                Claims {
                    iat: i64::MAX - 10,
                    exp: i64::MAX,
                    ..claims()
                },
                Invalid::NotYetValid,
            ),
            (
                Claims {
                    htm: Some("POST".into()),
                    ..claims()
                },
                Invalid::Method,
            ),
            (
                Claims {
                    htu: Some("/rest/services/x/other/".into()),
                    ..claims()
                },
                Invalid::Path,
            ),
            (
                Claims {
                    jti: "short".into(),
                    ..claims()
                },
                Invalid::Jti,
            ),
        ];
        for (c, why) in cases {
            assert_eq!(check(&mint("k1", SECRET, &c)), Err(why.clone()), "{why}");
        }
    }

    #[test]
    fn skew_and_binding_that_match() {
        // Within the skew on both sides.
        let c = Claims {
            iat: NOW + 4,
            exp: NOW + 30,
            ..claims()
        };
        assert!(check(&mint("k1", SECRET, &c)).is_ok());
        let c = Claims {
            iat: NOW - 60,
            exp: NOW - 4,
            ..claims()
        };
        assert!(check(&mint("k1", SECRET, &c)).is_ok());
        let c = Claims {
            htm: Some("get".into()),
            htu: Some(format!("http://127.0.0.1:8088{}?a=1", target().path)),
            ..claims()
        };
        assert!(check(&mint("k1", SECRET, &c)).is_ok());
    }
}
