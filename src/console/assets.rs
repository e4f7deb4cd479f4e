//! The console's page, styles and scripts, compiled into the binary (`src/console/web/`):
//! plain HTML, CSS and JavaScript modules, no build step, nothing fetched at run time.
//!
//! Each answer carries an ETag (a hash of the bytes), so a browser revalidates cheaply and
//! never runs a stale script after an upgrade.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $type:expr),+ $(,)?) => {
        /// Every embedded file.
        pub const ASSETS: &[Asset] = &[$(Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("web/", $name)),
        }),+];
    };
}

const JS: &str = "text/javascript; charset=utf-8";

assets! {
    "index.html" => "text/html; charset=utf-8",
    "login.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "js/api.js" => JS,
    "js/dom.js" => JS,
    "js/login.js" => JS,
    "js/app.js" => JS,
    "js/charts.js" => JS,
    "js/dashboard.js" => JS,
    "js/outbox.js" => JS,
    "js/playground.js" => JS,
    "js/yaml.js" => JS,
    "js/trace.js" => JS,
    "js/history.js" => JS,
    "js/timeline.js" => JS,
    "js/audit.js" => JS,
}

fn etags() -> &'static Vec<String> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.bytes);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

fn find(name: &str) -> Option<(usize, &'static Asset)> {
    ASSETS.iter().enumerate().find(|(_, a)| a.name == name)
}

/// A page (HTML) by name.
pub fn page(name: &str) -> Response {
    match find(name) {
        Some((_, a)) => ([(header::CONTENT_TYPE, a.content_type)], a.bytes).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /console/assets/{file}`: styles, scripts and images (code only, no data).
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some((i, asset)) = find(&file).filter(|(_, a)| !a.name.ends_with(".html")) else {
        return super::error(StatusCode::NOT_FOUND, "no such console asset");
    };
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("hex is a valid header"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
