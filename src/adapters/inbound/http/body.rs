//! Reading request bodies with a size limit, before and after gzip decompression, so neither
//! a huge upload nor a small gzip bomb can make the server buffer more than the limit.

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use poem::http::header;
use poem::Request;
use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("unsupported Content-Encoding {0:?}; send the body plain or gzip-compressed")]
    UnsupportedEncoding(String),
    #[error("the request body is not valid gzip")]
    BadGzip,
    #[error("the request body could not be read: {0}")]
    Read(String),
}

/// Reads the whole body, decompressing gzip, and fails as soon as it passes `limit` bytes
/// (compressed or decompressed). Removes `Content-Encoding` once decoded.
pub async fn read_limited(req: &mut Request, limit: usize) -> Result<Bytes, BodyError> {
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => return Err(BodyError::UnsupportedEncoding(other.to_owned())),
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut stream = req.take_body().into_bytes_stream();
    let mut raw = BytesMut::new();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| BodyError::Read(e.to_string()))?
    {
        if raw.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        raw.extend_from_slice(&chunk);
    }
    if !gzip {
        return Ok(raw.freeze());
    }
    req.headers_mut().remove(header::CONTENT_ENCODING);
    req.headers_mut().remove(header::CONTENT_LENGTH);
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit + 1));
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| BodyError::BadGzip)?;
    if out.len() > limit {
        return Err(BodyError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}
