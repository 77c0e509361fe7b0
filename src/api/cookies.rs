//! Browser sessions: the same tokens as the JSON API, carried in cookies that page scripts cannot
//! read (`HttpOnly`), that travel over HTTPS only (`Secure`; browsers allow them on plain
//! `http://localhost` too) and never with a request another site starts (`SameSite=Strict`). A
//! request authenticated by cookie that changes state must also echo the session's CSRF token in
//! `X-CSRF-Token`. This module owns the cookie names and attributes; tokens are checked in `auth`.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use cookie::{Cookie, SameSite};

use crate::auth::Tokens;

pub const ACCESS: &str = "sokana_access";
pub const REFRESH: &str = "sokana_refresh";
/// Readable by page scripts, which send it back in [`CSRF_HEADER`].
pub const CSRF: &str = "sokana_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The refresh token goes to the refresh route only.
const REFRESH_PATH: &str = "/api/v1/auth/refresh";

/// The value of cookie `name`, if the request sent it.
pub fn read(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_string())
}

/// The `X-CSRF-Token` header, if sent.
pub fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER)?.to_str().ok()
}

/// Whether a request with this method can change state, and so needs the CSRF token.
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Adds the cookies that hold a session's tokens and its CSRF token.
pub fn set(headers: &mut HeaderMap, tokens: &Tokens, csrf: &str, refresh_seconds: i64) {
    add(headers, ACCESS, &tokens.access_token, "/", tokens.expires_in, true);
    add(headers, REFRESH, &tokens.refresh_token, REFRESH_PATH, refresh_seconds, true);
    add(headers, CSRF, csrf, "/", refresh_seconds, false);
}

/// Adds cookies that make the browser forget the session's.
pub fn clear(headers: &mut HeaderMap) {
    add(headers, ACCESS, "", "/", 0, true);
    add(headers, REFRESH, "", REFRESH_PATH, 0, true);
    add(headers, CSRF, "", "/", 0, false);
}

fn add(headers: &mut HeaderMap, name: &'static str, value: &str, path: &'static str, seconds: i64, http_only: bool) {
    let cookie = Cookie::build((name, value))
        .path(path)
        .secure(true)
        .http_only(http_only)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(seconds))
        .build();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        headers.append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_among_others_and_set_with_their_attributes() {
        let mut request = HeaderMap::new();
        request.insert(header::COOKIE, HeaderValue::from_static("theme=dark; sokana_access=abc.def; x=1"));
        assert_eq!(read(&request, ACCESS).as_deref(), Some("abc.def"));
        assert_eq!(read(&request, REFRESH), None);

        let mut response = HeaderMap::new();
        clear(&mut response);
        let set: Vec<&str> = response.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
        assert_eq!(set.len(), 3);
        assert!(set[0].contains("HttpOnly") && set[0].contains("Secure") && set[0].contains("SameSite=Strict"));
        assert!(set[0].contains("Max-Age=0"));
        assert!(set[1].contains("Path=/api/v1/auth/refresh"));
        assert!(!set[2].contains("HttpOnly"), "page scripts read the CSRF token");
    }
}
