//! Helpers shared by the end-to-end test files: the `rag` binary, a bare
//! HTTP/1.1 client (enough for these tests without pulling an HTTP client
//! crate into the build), multipart bodies, servers that stop on drop.
#![allow(dead_code)] // each test file uses its own share

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("RAG_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

pub fn rag(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rag"));
    cmd.env("RAG_MODELS_DIR", models_dir())
        .arg("--data-dir")
        .arg(data)
        .current_dir(root());
    cmd
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("rag runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn fails_with(out: Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got {err:?}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

/// A bare HTTP/1.1 exchange: (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, &[], body);
    (status, body)
}

/// Stops a server even when an assertion fails first.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two folders of the handbook (about 460 chunks): large enough that an
/// ingest is still running when it is killed.
pub fn handbook_subset() -> Vec<PathBuf> {
    ["travel-and-leave", "tools"]
        .iter()
        .map(|f| {
            let dir = root().join("../shared/data/handbook/pages").join(f);
            assert!(
                dir.is_dir(),
                "{} is missing (../shared beside the checkout)",
                dir.display()
            );
            dir
        })
        .collect()
}

pub fn doctor(data: &Path) -> Value {
    serde_json::from_str(&run_ok(rag(data).args(["doctor", "--json"]))).unwrap()
}

/// Sends a request with any body; write errors are ignored (a server may
/// answer before it has read everything).
pub fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    http_raw_as(addr, None, method, path, content_type, body)
}

/// [`http_raw`] with an API key (`Authorization: Bearer`).
pub fn http_raw_as(
    addr: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Host", addr), ("Content-Type", content_type)];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    http_exact(addr, method, path, &headers, body)
}

/// A request with exactly the headers given after the request line (`Host`
/// included, so a test can name another), and its body: (status, body).
pub fn http_exact(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body));
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub const BOUNDARY: &str = "rag-test-boundary-7d1f";

/// A multipart/form-data body: `(field, Some(file name), bytes)` for files,
/// `(field, None, value)` for plain fields.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, file, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(name) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn upload(addr: &str, parts: &[(&str, Option<&str>, &[u8])]) -> (u16, Value) {
    upload_as(addr, None, parts)
}

/// [`upload`] with an API key.
pub fn upload_as(
    addr: &str,
    key: Option<&str>,
    parts: &[(&str, Option<&str>, &[u8])],
) -> (u16, Value) {
    let (status, body) = http_raw_as(
        addr,
        key,
        "POST",
        "/v1/documents",
        &format!("multipart/form-data; boundary={BOUNDARY}"),
        &multipart(parts),
    );
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}")),
    )
}

pub fn start_server(data: &Path) -> (KillOnDrop, String) {
    start_server_with(data, &[])
}

pub fn start_server_with(data: &Path, env: &[(&str, &str)]) -> (KillOnDrop, String) {
    let mut cmd = rag(data);
    cmd.envs(env.iter().copied()).stderr(Stdio::inherit());
    spawn_server(cmd)
}

/// Starts `cmd` (a `rag` command: settings and stderr as the caller
/// wants) as `serve` on a free loopback port; returns it and its address.
pub fn spawn_server(mut cmd: Command) -> (KillOnDrop, String) {
    let mut child = KillOnDrop(
        cmd.args(["serve", "--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect(&line)
        .to_string();
    (child, addr)
}

pub fn wait_for_job(addr: &str, id: &str) -> Value {
    wait_for_job_as(addr, None, id)
}

/// [`wait_for_job`] with an API key.
pub fn wait_for_job_as(addr: &str, key: Option<&str>, id: &str) -> Value {
    for _ in 0..600 {
        let (status, body) = http_raw_as(
            addr,
            key,
            "GET",
            &format!("/v1/jobs/{id}"),
            "application/json",
            b"",
        );
        assert_eq!(status, 200, "{body}");
        let job: Value = serde_json::from_str(&body).unwrap();
        if job["state"] == "done" || job["state"] == "failed" {
            return job;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("job {id} did not finish");
}

/// The body of a chunked HTTP/1.1 response, joined.
pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// The `data:` payloads of a Server-Sent Events body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    dechunk(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// A streamed chat completion: (the deltas joined, the last JSON chunk).
pub fn stream_chat(addr: &str, body: &str) -> (String, Value) {
    let (status, raw) = http(addr, "POST", "/v1/chat/completions", body);
    assert_eq!(status, 200, "{raw}");
    let events = sse_data(&raw);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, chunks.last().unwrap().clone())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// [`http`] with extra request headers; the response's head too.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_lowercase(), body.to_string())
}

pub fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

/// Posts a chat completion and reads only the response head, leaving the
/// (streamed) body on the connection: (head, connection).
pub fn open_chat_stream(addr: &str, body: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}
