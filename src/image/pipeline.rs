//! One streaming pass from the release file to Glance, never holding the image in memory or on
//! disk: the compressed bytes (downloaded, resuming after dropped connections, or read from a
//! file) are hashed with SHA-512 and fed to the OpenPGP verifier and to the bzip2 decoder, each
//! on its own thread, and the decoded bytes are streamed into Glance. The decoder holds back
//! the last block until the digest and the signature have been checked: a file that does not
//! verify never completes its upload, so Glance never marks it active.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha512};
use tokio::sync::{mpsc, oneshot};

use super::ImageError;
use super::signature::Signer;
use crate::cloud::Cloud;

/// Where the compressed image comes from.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    Url(String),
    File(PathBuf),
}

/// What the pass measured.
#[derive(Debug, Clone)]
pub(crate) struct Streamed {
    pub(crate) compressed_bytes: u64,
    pub(crate) image_bytes: u64,
    /// SHA-512 of the decoded image, which Glance must report too.
    pub(crate) image_sha512: String,
    /// Times the download was resumed after a dropped connection.
    pub(crate) resumed: u32,
}

/// Progress reports: compressed bytes read (of `total`, if known) and image bytes uploaded.
pub(crate) trait Progress: Send + Sync {
    fn update(&self, read: u64, total: Option<u64>, uploaded: u64);
}

const BLOCK: usize = 1 << 20;
const QUEUE: usize = 8;
const DOWNLOAD_ATTEMPTS: u32 = 6;

/// Streams `input` into the queued Glance image `image_id`, checking it against `sha512`
/// (from DIGESTS) and, when given, a signature and the key that made it. `file` names the
/// input in messages.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_into_glance(
    cloud: &Cloud,
    http: &reqwest::Client,
    image_id: &str,
    input: &Input,
    file: &str,
    sha512: Option<&str>,
    verification: Option<(Signer, pgp::packet::Signature)>,
    progress: &dyn Progress,
) -> Result<Streamed, ImageError> {
    let (to_verifier, verifier_input) = mpsc::channel::<Bytes>(QUEUE);
    let (to_decoder, decoder_input) = mpsc::channel::<Bytes>(QUEUE);
    let (to_upload, upload_input) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let (verdict_tx, verdict_rx) = oneshot::channel::<bool>();
    let uploaded = Arc::new(AtomicU64::new(0));

    let file_name = file.to_string();
    let verifier = verification.map(|(signer, signature)| {
        tokio::task::spawn_blocking(move || {
            signer.verify(&signature, ChannelReader::new(verifier_input), &file_name)
        })
    });
    let decoder = tokio::task::spawn_blocking(move || decode(decoder_input, to_upload, verdict_rx));
    let body = reqwest::Body::wrap_stream(UploadStream {
        blocks: upload_input,
        uploaded: uploaded.clone(),
    });

    let feeding = async move {
        let to_verifier = verifier.is_some().then_some(to_verifier);
        let fed = feed(
            http,
            input,
            &to_decoder,
            to_verifier.as_ref(),
            progress,
            &uploaded,
        )
        .await;
        // End of input for the decoder and the verifier.
        drop(to_decoder);
        drop(to_verifier);
        let signature = match verifier {
            Some(task) => Some(task.await.map_err(|e| ImageError::Internal(e.to_string()))),
            None => None,
        };
        let digest_ok =
            matches!(&fed, Ok((digest, _, _)) if sha512.is_none_or(|want| want == digest));
        let signature_ok = matches!(&signature, None | Some(Ok(Ok(()))));
        // Only now may the decoder release the image's last block.
        let _ = verdict_tx.send(fed.is_ok() && digest_ok && signature_ok);
        (fed, digest_ok, signature)
    };
    let ((fed, digest_ok, signature), upload) =
        tokio::join!(feeding, cloud.upload_image(image_id, body, None));
    let decoded = decoder
        .await
        .map_err(|e| ImageError::Internal(e.to_string()))?;

    // The most telling reason first: what the bytes are, then how moving them went.
    let (digest, compressed_bytes, resumed) = fed?;
    if !digest_ok {
        let (file, expected, actual) = (
            file.to_string(),
            sha512.unwrap_or_default().to_string(),
            digest,
        );
        // An authentic file with a wrong DIGESTS entry is a different story than an altered file.
        return Err(if matches!(signature, Some(Ok(Ok(())))) {
            ImageError::DigestsDisagree {
                file,
                expected,
                actual,
            }
        } else {
            ImageError::DigestMismatch {
                file,
                expected,
                actual,
            }
        });
    }
    if let Some(checked) = signature {
        checked??;
    }
    let (image_bytes, image_sha512) = decoded?;
    upload?;
    Ok(Streamed {
        compressed_bytes,
        image_bytes,
        image_sha512,
        resumed,
    })
}

/// Reads the input, hashing it and handing every chunk to the decoder (and the verifier).
/// Returns the SHA-512, the size and how often the download resumed.
async fn feed(
    http: &reqwest::Client,
    input: &Input,
    decoder: &mpsc::Sender<Bytes>,
    verifier: Option<&mpsc::Sender<Bytes>>,
    progress: &dyn Progress,
    uploaded: &AtomicU64,
) -> Result<(String, u64, u32), ImageError> {
    let mut hasher = Sha512::new();
    let mut done = 0u64;
    let mut resumed = 0;
    let pass_on = async |chunk: Bytes, done: &mut u64, hasher: &mut Sha512| {
        hasher.update(&chunk);
        *done += chunk.len() as u64;
        if let Some(verifier) = verifier {
            // The verifier only stops early on a broken signature, judged at the end anyway.
            let _ = verifier.send(chunk.clone()).await;
        }
        // A decoder that stopped (corrupt data) is reported by its own result.
        let _ = decoder.send(chunk).await;
    };
    match input {
        Input::File(path) => {
            use tokio::io::AsyncReadExt;
            let mut reader = tokio::fs::File::open(path)
                .await
                .map_err(|e| ImageError::Read {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            let total = reader.metadata().await.ok().map(|m| m.len());
            let mut buffer = vec![0u8; BLOCK];
            loop {
                let n = reader
                    .read(&mut buffer)
                    .await
                    .map_err(|e| ImageError::Read {
                        what: path.display().to_string(),
                        detail: e.to_string(),
                    })?;
                if n == 0 {
                    break;
                }
                pass_on(Bytes::copy_from_slice(&buffer[..n]), &mut done, &mut hasher).await;
                progress.update(done, total, uploaded.load(Ordering::Relaxed));
            }
        }
        Input::Url(url) => {
            let mut total = None;
            let mut failures = 0;
            'download: loop {
                let mut request = http.get(url);
                if done > 0 {
                    request = request.header("Range", format!("bytes={done}-"));
                }
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        failures += 1;
                        if failures >= DOWNLOAD_ATTEMPTS {
                            return Err(ImageError::Download {
                                url: url.clone(),
                                detail: crate::kube::error_chain(&e),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                        continue;
                    }
                };
                let status = response.status();
                if done > 0 && status.as_u16() != 206 {
                    return Err(ImageError::Download {
                        url: url.clone(),
                        detail: format!(
                            "the connection dropped after {done} bytes and the server answered {status} instead of resuming (206)"
                        ),
                    });
                }
                if !status.is_success() {
                    return Err(ImageError::Download {
                        url: url.clone(),
                        detail: format!("the server answered {status}"),
                    });
                }
                if total.is_none() {
                    total = response.content_length();
                }
                let mut response = response;
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            pass_on(chunk, &mut done, &mut hasher).await;
                            progress.update(done, total, uploaded.load(Ordering::Relaxed));
                        }
                        Ok(None) if total.is_none_or(|t| done >= t) => break 'download,
                        Ok(None) | Err(_) => {
                            failures += 1;
                            if failures >= DOWNLOAD_ATTEMPTS {
                                return Err(ImageError::Download {
                                    url: url.clone(),
                                    detail: format!(
                                        "the connection kept dropping ({done} bytes received)"
                                    ),
                                });
                            }
                            resumed += 1;
                            tracing::info!("download of {url} dropped at {done} bytes; resuming");
                            tokio::time::sleep(Duration::from_millis(300 * u64::from(failures)))
                                .await;
                            continue 'download;
                        }
                    }
                }
            }
        }
    }
    Ok((hex::encode(hasher.finalize()), done, resumed))
}

/// Decodes bzip2 (any number of concatenated streams) block by block into the upload, holding
/// the last block back until `verdict` says the input verified. Returns the image's size and
/// SHA-512.
fn decode(
    input: mpsc::Receiver<Bytes>,
    upload: mpsc::Sender<Result<Bytes, std::io::Error>>,
    verdict: oneshot::Receiver<bool>,
) -> Result<(u64, String), ImageError> {
    let mut decoder =
        bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(ChannelReader::new(input)));
    let mut hasher = Sha512::new();
    let mut size = 0u64;
    let mut held: Option<Bytes> = None;
    let refuse = |upload: &mpsc::Sender<Result<Bytes, std::io::Error>>, why: &str| {
        let _ = upload.blocking_send(Err(std::io::Error::other(why.to_string())));
    };
    loop {
        let mut block = vec![0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match decoder.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    refuse(&upload, "the image could not be decompressed");
                    return Err(ImageError::Decompress(e.to_string()));
                }
            }
        }
        block.truncate(filled);
        if filled == 0 {
            break;
        }
        hasher.update(&block);
        size += filled as u64;
        if let Some(previous) = held.replace(Bytes::from(block))
            && upload.blocking_send(Ok(previous)).is_err()
        {
            return Err(ImageError::Internal(
                "the upload stopped taking data".into(),
            ));
        }
    }
    if verdict.blocking_recv() != Ok(true) {
        refuse(&upload, "the image did not verify");
        return Ok((size, hex::encode(hasher.finalize())));
    }
    if let Some(last) = held {
        let _ = upload.blocking_send(Ok(last));
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// A blocking `Read` over chunks arriving on a channel.
struct ChannelReader {
    input: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(input: mpsc::Receiver<Bytes>) -> ChannelReader {
        ChannelReader {
            input,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.input.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The upload body: decoded blocks as they come, counted.
struct UploadStream {
    blocks: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    uploaded: Arc<AtomicU64>,
}

impl futures_core::Stream for UploadStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.blocks.poll_recv(cx);
        if let std::task::Poll::Ready(Some(Ok(block))) = &polled {
            self.uploaded
                .fetch_add(block.len() as u64, Ordering::Relaxed);
        }
        polled
    }
}
