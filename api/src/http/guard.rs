//! What a web page in the user's browser could send to this server, refused
//! before it reaches a handler. A page on another site can send a POST
//! without a preflight (a form, or `fetch` with a `text/plain` body), and
//! by DNS rebinding it can make its own name point at a server on the
//! user's loopback and read the answers. In open mode every caller is an
//! admin, so either would let any page add a source, upload or delete
//! documents, or read them.
//!
//! - A request that changes anything (any method but GET, HEAD and
//!   OPTIONS) from another site is refused with 403: an `Origin` that is
//!   not this server's own (`Host`), or `Sec-Fetch-Site` other than
//!   `same-origin` or `none`. Clients that are not browsers send neither.
//! - Its body must be JSON (`multipart/form-data` for uploads), else 415:
//!   the content types a page can send without a preflight are refused.
//! - In open mode, a `Host` that is not an IP address or a `localhost`
//!   name is refused with 421 for every request: that is what a rebound
//!   name looks like, and a local server has no other.
//!
//! Done here rather than with `tower_http::cors`: CORS decides what a page
//! may read back, and these requests are harmful before anything is read.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// The route that takes uploads (the only multipart body).
const UPLOADS: &str = "/v1/documents";

pub async fn same_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // HTTP/2 carries the host in the URI (`:authority`), not in a header.
    let host = match request.headers().get(header::HOST) {
        Some(host) => host.to_str().unwrap_or(""),
        None => request.uri().authority().map_or("", |a| a.as_str()),
    };
    let refused = refusal(
        state.open,
        request.method(),
        request.uri().path(),
        host,
        request.headers(),
    );
    match refused {
        Some((status, message)) => {
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                %message,
                "refused a request a web page could have sent"
            );
            ApiError(status, message).into_response()
        }
        None => next.run(request).await,
    }
}

/// Why the request is refused, if it is.
fn refusal(
    open: bool,
    method: &Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
) -> Option<(StatusCode, String)> {
    if open && !local_host(host) {
        return Some((
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server runs without keys and answers only to its IP address or localhost, \
                 not to the name {host:?}; use http://127.0.0.1:PORT, or give it keys \
                 (`rag keys create`) to serve it under a name"
            ),
        ));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Some((
            StatusCode::FORBIDDEN,
            format!(
                "a {site} request cannot change anything here; send it from this server's own page or from a client that is not a browser"
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
        if !own {
            return Some((
                StatusCode::FORBIDDEN,
                format!(
                    "a request from the page of another site ({}) cannot change anything here",
                    origin.to_str().unwrap_or("an unreadable origin")
                ),
            ));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|n| n.trim() != "0");
    let accepted = match content_type.as_deref() {
        // No body, no type: nothing a form could carry.
        None => !body,
        Some(t) => {
            t == "application/json"
                || (t.starts_with("application/") && t.ends_with("+json"))
                || (t == "multipart/form-data" && path == UPLOADS)
        }
    };
    (!accepted).then(|| {
        let wanted = if path == UPLOADS {
            "multipart/form-data"
        } else {
            "application/json"
        };
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "send the body as {wanted} (Content-Type: {wanted}), not {}",
                content_type.as_deref().unwrap_or("without a Content-Type")
            ),
        )
    })
}

/// Whether `host` (a `Host` header: a name or address, and a port) names
/// this machine without DNS: an IP address, `localhost` or a name under
/// `.localhost`.
fn local_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:8080
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    /// [`refusal`] with the host from the pairs, as the middleware reads it.
    fn refused(
        open: bool,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(StatusCode, String)> {
        let host = headers
            .get(header::HOST)
            .map_or("", |h| h.to_str().unwrap());
        refusal(open, method, path, host, headers)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn local_hosts_are_addresses_and_localhost_names() {
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "localhost:3000",
            "LOCALHOST",
            "app.localhost:80",
            "192.168.1.20:8080",
        ] {
            assert!(local_host(host), "{host}");
        }
        for host in [
            "",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!local_host(host), "{host}");
        }
    }

    #[test]
    fn pages_of_other_sites_cannot_post() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:8080");
        let post = |pairs: &[(&'static str, &'static str)]| {
            refused(true, &Method::POST, "/v1/sources", &headers(pairs)).map(|(s, _)| s)
        };
        // The server's own page, and clients that are not browsers.
        assert_eq!(
            post(&[host, json, ("origin", "http://127.0.0.1:8080")]),
            None
        );
        assert_eq!(post(&[host, json, ("sec-fetch-site", "same-origin")]), None);
        assert_eq!(post(&[host, json]), None);
        // Another site, or another port of this one.
        for pairs in [
            [host, json, ("origin", "http://attacker.example")],
            [host, json, ("origin", "http://127.0.0.1:3000")],
            [host, json, ("origin", "null")],
            [host, json, ("sec-fetch-site", "cross-site")],
            [host, json, ("sec-fetch-site", "same-site")],
        ] {
            assert_eq!(post(&pairs), Some(StatusCode::FORBIDDEN), "{pairs:?}");
        }
        // What a form or a text/plain fetch sends.
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let pairs = [host, ("content-type", content_type)];
            assert_eq!(post(&pairs), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        assert_eq!(
            post(&[host, ("content-type", "application/json; charset=utf-8")]),
            None
        );
        // Uploads are multipart; an empty POST (sync) needs no type; a
        // DELETE has no body.
        let upload = headers(&[host, ("content-type", "multipart/form-data; boundary=x")]);
        assert_eq!(refused(true, &Method::POST, UPLOADS, &upload), None);
        let empty = headers(&[host, ("content-length", "0")]);
        assert_eq!(
            refused(true, &Method::POST, "/v1/sources/wiki/sync", &empty),
            None
        );
        let untyped = headers(&[host, ("content-length", "12")]);
        assert!(refused(true, &Method::POST, "/v1/sources/wiki/sync", &untyped).is_some());
        assert_eq!(
            refused(true, &Method::DELETE, "/v1/sources/wiki", &headers(&[host])),
            None
        );
        let cross_delete = headers(&[host, ("origin", "http://attacker.example")]);
        assert!(refused(false, &Method::DELETE, "/v1/sources/wiki", &cross_delete).is_some());
    }

    /// A rebound name is refused in open mode, for reads too; with keys the
    /// key is the check, and a name is how a cluster is reached.
    #[test]
    fn open_mode_answers_only_to_local_hosts() {
        let rebound = headers(&[("host", "attacker.example:8080")]);
        assert_eq!(
            refused(true, &Method::GET, "/v1/documents", &rebound).map(|(s, _)| s),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );
        assert_eq!(
            refused(false, &Method::GET, "/v1/documents", &rebound),
            None
        );
        let local = headers(&[("host", "localhost:8080")]);
        assert_eq!(refused(true, &Method::GET, "/v1/documents", &local), None);
    }
}
