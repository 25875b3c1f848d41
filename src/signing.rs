//! Signed, expiring URLs: HMAC-SHA256 with key ids, verified in constant time.
//!
//! A signed URL is a path plus a query. The signature covers a canonical form of
//! everything that decides what is served or accepted:
//!
//! ```text
//! media-store-url-v1 \n METHOD \n PATH \n sorted query pairs (sig excluded) \n CONTENT
//! ```
//!
//! where the query pairs include `exp` (Unix seconds) and `kid`, and every other
//! option (`variant`, `dl`, upload limits...). CONTENT is the BLAKE3 hash of the
//! bytes the URL was issued for (or `-` for uploads), so a URL can never serve
//! other bytes than the ones it was issued for, even if the id were reused.
//! The signature is the base64url (no padding) HMAC-SHA256 in `sig`.
//!
//! Owns no I/O: keys come in as bytes, time comes from an injected [`Clock`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::clock::Clock;
use crate::error::{Classify, ErrorKind};

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted secret: the HMAC-SHA256 block of security.
pub const MIN_SECRET_BYTES: usize = 32;
const DOMAIN: &str = "media-store-url-v1";

/// Secrets are written base64url; padding is optional.
const SECRET_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// Missing, malformed, tampered, signed by an unknown key, or valid longer
    /// than the maximum TTL: all look the same to the client (403).
    #[error("the URL's signature is not valid")]
    Invalid,
    /// Authentic but past its expiry (410).
    #[error("the URL has expired")]
    Expired,
    #[error("ttl_secs must be between 1 and {max}")]
    BadTtl { max: u64 },
}

impl Classify for SignError {
    fn kind(&self) -> ErrorKind {
        match self {
            SignError::Invalid => ErrorKind::Forbidden,
            SignError::Expired => ErrorKind::Gone,
            SignError::BadTtl { .. } => ErrorKind::BadRequest,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            SignError::Invalid => "invalid_signature",
            SignError::Expired => "url_expired",
            SignError::BadTtl { .. } => "bad_ttl",
        }
    }
}

/// What a signed URL is for, besides its query options.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The method class: `GET` for downloads (HEAD verifies as GET), `POST` for
    /// uploads (PUT verifies as POST).
    pub method: &'a str,
    /// The URL path, e.g. `/files/42`.
    pub path: &'a str,
    /// The bytes a download URL was issued for; `None` for uploads.
    pub content: Option<&'a blake3::Hash>,
}

/// A freshly signed query string (without the leading `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub query: String,
    pub expires_at: i64,
}

/// A verified URL: its expiry and its query options (without `exp`, `kid`, `sig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub expires_at: i64,
    pub options: Vec<(String, String)>,
}

impl Verified {
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Signs with the active key; verifies with any configured key.
pub struct Signer {
    /// Keyed MACs, ready to clone (the key schedule runs once, not per request).
    keys: HashMap<String, HmacSha256>,
    active_kid: String,
    max_ttl: u64,
    default_ttl: u64,
    clock: Arc<dyn Clock>,
}

/// Checks the `[signing]` section without building a signer.
pub fn validate_config(c: &SigningConfig) -> Result<(), String> {
    if c.max_ttl_secs == 0 {
        return Err("signing.max_ttl_secs must be positive".into());
    }
    if c.default_ttl_secs == 0 || c.default_ttl_secs > c.max_ttl_secs {
        return Err("signing.default_ttl_secs must be between 1 and max_ttl_secs".into());
    }
    if c.keys.is_empty() {
        if !c.active_kid.is_empty() {
            return Err("signing.active_kid is set but signing.keys is empty".into());
        }
        return Ok(());
    }
    if !c.keys.contains_key(&c.active_kid) {
        return Err(format!(
            "signing.active_kid {:?} is not one of signing.keys",
            c.active_kid
        ));
    }
    for (kid, secret) in &c.keys {
        check_kid(kid)?;
        decode_secret(secret).map_err(|e| format!("signing.keys.{kid}: {e}"))?;
    }
    Ok(())
}

/// Key ids travel in URLs: keep them short and URL-safe.
pub fn check_kid(kid: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id {kid:?} must be 1-32 characters of A-Z a-z 0-9 - _"
        ))
    }
}

/// A base64url secret of at least [`MIN_SECRET_BYTES`].
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let bytes = SECRET_B64
        .decode(secret.trim())
        .map_err(|_| "the secret is not base64url".to_string())?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the secret has {} bytes; at least {MIN_SECRET_BYTES} are needed",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// A new random secret, base64url-encoded.
pub fn generate_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl Signer {
    /// `keys` are (kid, secret bytes); `active_kid` must be one of them.
    pub fn new(
        keys: Vec<(String, Vec<u8>)>,
        active_kid: &str,
        max_ttl: u64,
        default_ttl: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<Signer, String> {
        let mut map = HashMap::new();
        for (kid, secret) in keys {
            check_kid(&kid)?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "key {kid:?} is shorter than {MIN_SECRET_BYTES} bytes"
                ));
            }
            let mac = HmacSha256::new_from_slice(&secret).map_err(|e| e.to_string())?;
            map.insert(kid, mac);
        }
        if !map.contains_key(active_kid) {
            return Err(format!("no key with the active id {active_kid:?}"));
        }
        if max_ttl == 0 || default_ttl == 0 || default_ttl > max_ttl {
            return Err("TTLs must satisfy 0 < default <= max".into());
        }
        Ok(Signer {
            keys: map,
            active_kid: active_kid.to_owned(),
            max_ttl,
            default_ttl,
            clock,
        })
    }

    /// From `[signing]`; `fallback` is the data folder's generated key, used
    /// when the config lists no keys.
    pub fn from_config(
        c: &SigningConfig,
        fallback: Option<(String, Vec<u8>)>,
        clock: Arc<dyn Clock>,
    ) -> Result<Signer, String> {
        validate_config(c)?;
        if c.keys.is_empty() {
            let (kid, secret) =
                fallback.ok_or("signing.keys is empty and there is no generated key")?;
            return Signer::new(
                vec![(kid.clone(), secret)],
                &kid,
                c.max_ttl_secs,
                c.default_ttl_secs,
                clock,
            );
        }
        let keys = c
            .keys
            .iter()
            .map(|(k, s)| Ok((k.clone(), decode_secret(s)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Signer::new(
            keys,
            &c.active_kid,
            c.max_ttl_secs,
            c.default_ttl_secs,
            clock,
        )
    }

    pub fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    pub fn max_ttl(&self) -> u64 {
        self.max_ttl
    }

    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    /// Signs `target` with `options` for `ttl` seconds (default when `None`).
    pub fn sign(
        &self,
        target: Target<'_>,
        options: &[(&str, &str)],
        ttl: Option<u64>,
    ) -> Result<Signed, SignError> {
        let ttl = ttl.unwrap_or(self.default_ttl);
        if ttl == 0 || ttl > self.max_ttl {
            return Err(SignError::BadTtl { max: self.max_ttl });
        }
        let expires_at = self.clock.now_secs().saturating_add(ttl as i64);
        let exp = expires_at.to_string();
        // `exp` and `kid` first, options after, `sig` last: `path?exp=..&kid=..&..&sig=..`.
        let mut pairs: Vec<(&str, &str)> = vec![("exp", &exp), ("kid", &self.active_kid)];
        pairs.extend_from_slice(options);
        let mac = self.keys[&self.active_kid].clone();
        let sig = URL_SAFE_NO_PAD.encode(
            authenticate(mac, target, &mut pairs.clone())
                .finalize()
                .into_bytes(),
        );
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        query.append_pair("sig", &sig);
        Ok(Signed {
            query: query.finish(),
            expires_at,
        })
    }

    /// Verifies a raw query string (without `?`) for `target`.
    ///
    /// The signature is checked before the expiry, so only authentic URLs learn
    /// that they expired.
    pub fn verify(&self, target: Target<'_>, query: &str) -> Result<Verified, SignError> {
        // Borrowed unless percent-decoding was needed: verification runs on every
        // download, so it allocates as little as it can. Only the one spelling
        // `sign` writes is accepted (issue #14).
        let pairs = canonical_pairs(query)?;
        let single = |name: &str| {
            let mut it = pairs.iter().filter(|(k, _)| k == name);
            match (it.next(), it.next()) {
                (Some((_, v)), None) => Ok(v.as_ref()),
                _ => Err(SignError::Invalid),
            }
        };
        let sig = single("sig")?;
        let kid = single("kid")?;
        let exp: i64 = single("exp")?.parse().map_err(|_| SignError::Invalid)?;
        let mac = self.keys.get(kid).ok_or(SignError::Invalid)?.clone();
        let mut sig_bytes = [0u8; 64];
        let sig_len = URL_SAFE_NO_PAD
            .decode_slice(sig, &mut sig_bytes)
            .map_err(|_| SignError::Invalid)?;
        let mut signed: Vec<(&str, &str)> = pairs
            .iter()
            .filter(|(k, _)| k != "sig")
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        // `verify_slice` compares in constant time (subtle underneath).
        authenticate(mac, target, &mut signed)
            .verify_slice(&sig_bytes[..sig_len])
            .map_err(|_| SignError::Invalid)?;
        let now = self.clock.now_secs();
        if now >= exp {
            return Err(SignError::Expired);
        }
        // A URL issued under a longer cap (or a forged far expiry under an old
        // key) never outlives the current maximum.
        if exp - now > self.max_ttl as i64 {
            return Err(SignError::Invalid);
        }
        let options = pairs
            .iter()
            .filter(|(k, _)| !matches!(k.as_ref(), "sig" | "kid" | "exp"))
            .map(|(k, v)| (k.clone().into_owned(), v.clone().into_owned()))
            .collect();
        Ok(Verified {
            expires_at: exp,
            options,
        })
    }
}

/// The query's pairs, decoded, if it is spelled exactly as [`Signer::sign`]
/// writes it: `key=value` pieces joined by single `&`s, each key and value in
/// form-urlencoded canonical form (`[A-Za-z0-9*-._]` as is, space as `+`,
/// every other byte as upper-case `%XX`) and decoding to valid UTF-8. Any other
/// spelling of the same pairs (`exp=%31...`, `%65xp=`, `&&`, `%ff`, `%FF`
/// decoding to U+FFFD) is refused, so one grant has one spelling.
fn canonical_pairs(query: &str) -> Result<Vec<Pair<'_>>, SignError> {
    query
        .split('&')
        .map(|piece| {
            let (k, v) = piece.split_once('=').ok_or(SignError::Invalid)?;
            Ok((canonical_component(k)?, canonical_component(v)?))
        })
        .collect()
}

/// A decoded query parameter, borrowed from the query when it needed no decoding.
type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_')
}

fn canonical_component(raw: &str) -> Result<Cow<'_, str>, SignError> {
    if raw.bytes().all(is_unreserved) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut it = raw.bytes();
    while let Some(b) = it.next() {
        bytes.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = |d: Option<u8>| {
                    d.and_then(|d| (d as char).to_digit(16))
                        .ok_or(SignError::Invalid)
                };
                let (hi, lo) = (hex(it.next())?, hex(it.next())?);
                (hi * 16 + lo) as u8
            }
            b => b,
        });
    }
    let decoded = String::from_utf8(bytes).map_err(|_| SignError::Invalid)?;
    let respelled: String = form_urlencoded::byte_serialize(decoded.as_bytes()).collect();
    if respelled != raw {
        return Err(SignError::Invalid);
    }
    Ok(Cow::Owned(decoded))
}

/// Feeds the canonical form of a request into `mac`: the pairs sorted and
/// form-encoded (`k=v&k=v`), so no two different requests share a canonical
/// form. Streamed into the MAC rather than built as a string.
fn authenticate(mut mac: HmacSha256, target: Target<'_>, pairs: &mut [(&str, &str)]) -> HmacSha256 {
    pairs.sort_unstable();
    for part in [DOMAIN, target.method, target.path] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            mac.update(b"&");
        }
        for piece in form_urlencoded::byte_serialize(k.as_bytes()) {
            mac.update(piece.as_bytes());
        }
        mac.update(b"=");
        for piece in form_urlencoded::byte_serialize(v.as_bytes()) {
            mac.update(piece.as_bytes());
        }
    }
    mac.update(b"\n");
    match target.content {
        Some(h) => mac.update(h.to_hex().as_bytes()),
        None => mac.update(b"-"),
    }
    mac.update(b"\n");
    mac
}

/// Keys for signed URLs (docs/downloads.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Key id -> base64url secret (at least 32 bytes). Every key here verifies; empty uses
    /// `<data_dir>/signing-key` (generated on first start).
    pub keys: BTreeMap<String, String>,
    /// The key that signs new URLs; must be in `keys` when `keys` is not empty.
    pub active_kid: String,
    /// No URL is valid longer than this after it was issued.
    pub max_ttl_secs: u64,
    /// Lifetime of a URL when the request names none.
    pub default_ttl_secs: u64,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            keys: BTreeMap::new(),
            active_kid: String::new(),
            max_ttl_secs: 7 * 24 * 3600,
            default_ttl_secs: 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};

    const T0: i64 = 1_800_000_000;

    fn signer(clock: Arc<ManualClock>) -> Signer {
        Signer::new(
            vec![("a".into(), vec![1; 32]), ("b".into(), vec![2; 32])],
            "a",
            3600,
            600,
            clock,
        )
        .unwrap()
    }

    fn target(hash: &blake3::Hash) -> Target<'_> {
        Target {
            method: "GET",
            path: "/files/7",
            content: Some(hash),
        }
    }

    #[test]
    fn signed_query_verifies_and_returns_options() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = signer(clock.clone());
        let h = blake3::hash(b"x");
        let signed = s
            .sign(target(&h), &[("variant", "original")], Some(60))
            .unwrap();
        assert_eq!(signed.expires_at, T0 + 60);
        let v = s.verify(target(&h), &signed.query).unwrap();
        assert_eq!(v.option("variant"), Some("original"));
        assert_eq!(v.expires_at, T0 + 60);
    }

    #[test]
    fn any_change_is_refused() {
        let s = signer(Arc::new(ManualClock::new(T0)));
        let h = blake3::hash(b"x");
        let q = s.sign(target(&h), &[("dl", "1")], None).unwrap().query;
        let other = blake3::hash(b"y");
        // Other bytes, path, method.
        assert_eq!(s.verify(target(&other), &q), Err(SignError::Invalid));
        let mut t = target(&h);
        t.path = "/files/8";
        assert_eq!(s.verify(t, &q), Err(SignError::Invalid));
        let mut t = target(&h);
        t.method = "POST";
        assert_eq!(s.verify(t, &q), Err(SignError::Invalid));
        // Removed, added or changed options.
        assert_eq!(
            s.verify(target(&h), &q.replace("dl=1&", "")),
            Err(SignError::Invalid)
        );
        assert_eq!(
            s.verify(target(&h), &format!("{q}&variant=x")),
            Err(SignError::Invalid)
        );
        assert_eq!(
            s.verify(target(&h), &q.replace("kid=a", "kid=b")),
            Err(SignError::Invalid)
        );
        // Every single-byte change of the query.
        for i in 0..q.len() {
            let mut bytes = q.clone().into_bytes();
            bytes[i] = if bytes[i] == b'Z' { b'Y' } else { b'Z' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(s.verify(target(&h), &changed).is_err(), "{changed}");
        }
        // Duplicated signature parameters are ambiguous: refused.
        assert_eq!(
            s.verify(target(&h), &format!("{q}&sig=AAAA")),
            Err(SignError::Invalid)
        );
        assert_eq!(s.verify(target(&h), ""), Err(SignError::Invalid));
    }

    #[test]
    fn only_the_canonical_spelling_verifies() {
        let s = signer(Arc::new(ManualClock::new(T0)));
        let h = blake3::hash(b"x");
        // Values that need encoding: a space, a slash, a non-ASCII letter, U+FFFD.
        let q = s
            .sign(target(&h), &[("variant", "a b/\u{e9}\u{FFFD}")], None)
            .unwrap()
            .query;
        assert!(q.contains("variant=a+b%2F%C3%A9%EF%BF%BD&"), "{q}");
        let v = s.verify(target(&h), &q).unwrap();
        assert_eq!(v.option("variant"), Some("a b/\u{e9}\u{FFFD}"));
        let exp = (T0 + 600).to_string();
        for respelled in [
            // Percent-encoded unreserved characters, in values and keys.
            q.replacen(
                &format!("exp={exp}"),
                &format!("exp=%{:X}{}", exp.as_bytes()[0], &exp[1..]),
                1,
            ),
            q.replacen("exp=", "%65xp=", 1),
            q.replacen("kid=a", "kid=%61", 1),
            // Empty pieces.
            q.replacen('&', "&&", 1),
            format!("{q}&"),
            format!("&{q}"),
            // Other spellings of the same bytes.
            q.replacen('+', "%20", 1),
            q.replacen("%2F", "%2f", 1),
            q.replacen("%2F", "/", 1),
            // Invalid UTF-8 that a lossy decoder turns into U+FFFD.
            q.replacen("%EF%BF%BD", "%FF", 1),
            q.replacen("%EF%BF%BD", "%FE", 1),
            // Broken escapes.
            q.replacen("%C3", "%C", 1),
            q.replacen("%C3", "%G3", 1),
        ] {
            assert_ne!(respelled, q);
            assert_eq!(
                s.verify(target(&h), &respelled),
                Err(SignError::Invalid),
                "{respelled}"
            );
        }
    }

    #[test]
    fn expiry_is_checked_after_the_signature() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = signer(clock.clone());
        let h = blake3::hash(b"x");
        let q = s.sign(target(&h), &[], Some(10)).unwrap().query;
        clock.advance(9);
        assert!(s.verify(target(&h), &q).is_ok());
        clock.advance(1);
        assert_eq!(s.verify(target(&h), &q), Err(SignError::Expired));
        // A forged later expiry is a bad signature, not "expired".
        let forged = q.replace(&format!("exp={}", T0 + 10), &format!("exp={}", T0 + 99));
        assert_eq!(s.verify(target(&h), &forged), Err(SignError::Invalid));
    }

    #[test]
    fn ttl_is_capped_when_signing_and_verifying() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = signer(clock.clone());
        let h = blake3::hash(b"x");
        assert_eq!(
            s.sign(target(&h), &[], Some(3601)),
            Err(SignError::BadTtl { max: 3600 })
        );
        assert!(s.sign(target(&h), &[], Some(0)).is_err());
        let q = s.sign(target(&h), &[], Some(3600)).unwrap().query;
        // The same keys under a smaller cap refuse the longer-lived URL.
        let strict =
            Signer::new(vec![("a".into(), vec![1; 32])], "a", 60, 60, clock.clone()).unwrap();
        assert_eq!(strict.verify(target(&h), &q), Err(SignError::Invalid));
    }

    #[test]
    fn rotated_keys_still_verify_and_removed_ones_do_not() {
        let clock = Arc::new(ManualClock::new(T0));
        let old = signer(clock.clone());
        let h = blake3::hash(b"x");
        let q = old.sign(target(&h), &[], None).unwrap().query;
        let rotated = Signer::new(
            vec![("a".into(), vec![1; 32]), ("b".into(), vec![2; 32])],
            "b",
            3600,
            600,
            clock.clone(),
        )
        .unwrap();
        assert!(rotated.verify(target(&h), &q).is_ok());
        assert!(
            rotated
                .sign(target(&h), &[], None)
                .unwrap()
                .query
                .contains("kid=b")
        );
        let removed = Signer::new(vec![("b".into(), vec![2; 32])], "b", 3600, 600, clock).unwrap();
        assert_eq!(removed.verify(target(&h), &q), Err(SignError::Invalid));
    }

    #[test]
    fn keys_come_from_the_file_or_the_environment() {
        use crate::config::{Config, Overrides};
        let secret = generate_secret();
        let env = std::collections::BTreeMap::from([
            (
                "MEDIA_STORE_SIGNING_KEYS".to_string(),
                format!("{{ env1 = \"{secret}\" }}"),
            ),
            (
                "MEDIA_STORE_SIGNING_ACTIVE_KID".to_string(),
                "env1".to_string(),
            ),
        ]);
        let c = Config::from_parts("", &env, &Overrides::default()).unwrap();
        assert_eq!(c.signing.keys.get("env1"), Some(&secret));
        let file = format!("[signing]\nactive_kid = \"f\"\n[signing.keys]\nf = \"{secret}\"\n");
        let c = Config::from_parts(&file, &Default::default(), &Overrides::default()).unwrap();
        let signer = Signer::from_config(&c.signing, None, Arc::new(SystemClock)).unwrap();
        assert_eq!(signer.active_kid(), "f");
        // An active key that is not listed is a config error.
        let bad = file.replace("active_kid = \"f\"", "active_kid = \"g\"");
        assert!(Config::from_parts(&bad, &Default::default(), &Overrides::default()).is_err());
    }

    #[test]
    fn config_validation() {
        let mut c = SigningConfig::default();
        assert!(validate_config(&c).is_ok());
        c.active_kid = "k1".into();
        assert!(validate_config(&c).is_err());
        c.keys.insert("k1".into(), generate_secret());
        assert!(validate_config(&c).is_ok());
        c.keys
            .insert("k2".into(), URL_SAFE_NO_PAD.encode([0u8; 16]));
        assert!(validate_config(&c).unwrap_err().contains("at least 32"));
        c.keys.remove("k2");
        c.keys.insert("bad kid".into(), generate_secret());
        assert!(validate_config(&c).is_err());
        c.keys.remove("bad kid");
        c.default_ttl_secs = c.max_ttl_secs + 1;
        assert!(validate_config(&c).is_err());
    }
}
