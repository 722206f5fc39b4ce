//! The web page: try a model on a CT series in the browser.
//!
//! `GET /` and `GET /ui` redirect to `/ui/`, which serves the page; `GET /ui/{file}` its
//! assets. Everything is embedded in the binary (`include_bytes!`): plain HTML, CSS and
//! ES modules with no build step and no third-party code, so the page works with no
//! internet and nothing installed beside the binary. The page calls the `/v1` API by
//! relative URLs (so it works over TLS and under a path prefix), asks for the API token
//! when the server answers 401, and sends it as `Authorization: Bearer`.
//!
//! These paths are open without the token ([`super::middleware::is_public`]): a browser
//! cannot send a bearer token when it navigates, and the files hold no data. Every
//! answer carries a Content-Security-Policy that allows only the server's own scripts,
//! styles, images and API (no inline script, no other origin, no framing).

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

use super::middleware::only;
use crate::error::{self, ServeError};

/// One embedded file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        name: "viewer.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/viewer.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/api.js"),
    },
    Asset {
        name: "dicom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/dicom.js"),
    },
    Asset {
        name: "npy.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/npy.js"),
    },
    Asset {
        name: "zip.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/zip.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("ui/favicon.svg"),
    },
];

/// Only this server's own files and API; no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The security headers of every page response.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// The scope of the page.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(web::resource("/").route(web::get().to(to_page))))
        .service(only(web::resource("/ui").route(web::get().to(to_page))))
        .service(only(web::resource("/ui/").route(web::get().to(index))))
        .service(only(
            web::resource("/ui/{file}").route(web::get().to(asset)),
        ));
}

/// A relative redirect to the page (`/` and `/ui` both resolve `ui/` to `/ui/`), so a
/// reverse proxy's path prefix is kept.
async fn to_page() -> HttpResponse {
    let mut res = HttpResponse::SeeOther();
    res.insert_header((header::LOCATION, "ui/"));
    secure(&mut res);
    res.finish()
}

async fn index(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    serve(&req, "index.html")
}

async fn asset(
    req: HttpRequest,
    file: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    serve(&req, &file)
}

fn secure(res: &mut actix_web::HttpResponseBuilder) {
    for (name, value) in SECURITY_HEADERS {
        res.insert_header((name, value));
    }
}

/// Strong validators of the embedded files (hashed once).
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hex = ldct_proto::model_dir::sha256_hex(a.body);
                format!("\"{}\"", hex.get(..32).unwrap_or(&hex))
            })
            .collect()
    })
}

fn serve(req: &HttpRequest, name: &str) -> Result<HttpResponse, actix_web::Error> {
    let Some((i, a)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return Err(error::for_path(
            ServeError::NotFound(format!("no file {name:?} in the web page")),
            req.path(),
        ));
    };
    let etag = etags().get(i).map(String::as_str).unwrap_or("\"\"");
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    secure(&mut res);
    // Revalidate every time: a new binary serves new files under the same names.
    res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.insert_header((header::ETAG, v));
    }
    if fresh {
        return Ok(res.finish());
    }
    Ok(res.content_type(a.content_type).body(a.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap_or("");
        for a in ASSETS.iter().skip(1) {
            let js_import = ASSETS
                .iter()
                .filter(|x| x.name.ends_with(".js"))
                .filter_map(|x| std::str::from_utf8(x.body).ok())
                .any(|src| src.contains(&format!("\"./{}\"", a.name)));
            assert!(
                html.contains(&format!("\"{}\"", a.name)) || js_import,
                "{} is embedded but neither index.html nor a module names it",
                a.name
            );
        }
        // And every relative file the page and its modules name is embedded.
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for a in ASSETS {
            let Ok(text) = std::str::from_utf8(a.body) else {
                continue;
            };
            for part in text.split("\"./").skip(1) {
                let file = part.split('"').next().unwrap_or("");
                assert!(names.contains(&file), "{} names ./{file}", a.name);
            }
        }
    }

    #[test]
    fn no_inline_script_or_style_the_policy_would_block() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap_or("");
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "inline style attribute");
        // No on...= event handler attributes inside tags.
        for tag in html.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or("");
            for attr in tag.split_whitespace().skip(1) {
                assert!(!attr.starts_with("on"), "inline event handler <{tag}>");
            }
        }
        for part in html.split("<script").skip(1) {
            let tag = part.split('>').next().unwrap_or("");
            assert!(tag.contains("src="), "inline <script>{tag}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
