//! End to end over the real engines and models: the `rag` binary, the
//! fixture wiki, qdrant-edge, SQLite, MiniLM and the default generator.
//!
//! Needs the default models: `rag models fetch` (scripts/test.sh runs it).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn models_dir() -> PathBuf {
    std::env::var_os("RAG_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

fn rag(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rag"));
    cmd.env("RAG_MODELS_DIR", models_dir())
        .arg("--data-dir")
        .arg(data)
        .current_dir(root());
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("rag runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One data directory with the fixture wiki ingested, shared by the tests
/// that only read it. Only one process may open a data directory, so the
/// tests take turns: the guard holds the directory for the caller.
fn fixture_data() -> (MutexGuard<'static, ()>, &'static Path) {
    static TURN: Mutex<()> = Mutex::new(());
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let report: Value = serde_json::from_str(&run_ok(rag(dir.path()).args([
            "ingest",
            "fixtures/wiki",
            "--json",
        ])))
        .unwrap();
        assert_eq!(report["failed"], 0, "{report}");
        assert_eq!(report["added"], 16, "{report}");
        dir
    });
    (guard, dir.path())
}

struct Question {
    question: String,
    answerable: bool,
    gold: Vec<String>,
}

fn questions() -> Vec<Question> {
    std::fs::read_to_string(root().join("fixtures/questions.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Question {
                question: v["question"].as_str().unwrap().to_string(),
                answerable: v["answerable"].as_bool().unwrap(),
                gold: v["gold_sources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
            }
        })
        .collect()
}

fn retrieve(data: &Path, question: &str) -> Vec<Value> {
    let out = run_ok(rag(data).args(["retrieve", question, "--k", "5", "--json"]));
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

#[test]
fn gold_source_is_in_the_top_5_for_at_least_90_percent() {
    let (_turn, data) = fixture_data();
    let qs: Vec<_> = questions().into_iter().filter(|q| q.answerable).collect();
    assert!(qs.len() >= 20);
    let mut found = 0;
    for q in &qs {
        let hits = retrieve(data, &q.question);
        assert!(hits.len() <= 5);
        for (i, h) in hits.iter().enumerate() {
            assert_eq!(h["rank"], i + 1);
            for field in [
                "score", "doc_id", "chunk_id", "source", "title", "page", "text",
            ] {
                assert!(h.get(field).is_some(), "hit lacks {field}: {h}");
            }
        }
        if hits
            .iter()
            .any(|h| q.gold.iter().any(|g| h["source"] == g.as_str()))
        {
            found += 1;
        } else {
            eprintln!("gold source missed: {}", q.question);
        }
    }
    let share = found as f64 / qs.len() as f64;
    assert!(
        share >= 0.9,
        "gold source in top 5 for {found}/{} questions",
        qs.len()
    );
}

#[test]
fn answers_cite_retrieved_chunks_and_unanswerable_questions_abstain() {
    let (_turn, data) = fixture_data();
    let qs = questions();
    let (mut abstained_unanswerable, mut unanswerable, mut answered) = (0, 0, 0);
    for q in &qs {
        let retrieved: HashSet<String> = retrieve(data, &q.question)
            .iter()
            .map(|h| h["chunk_id"].as_str().unwrap().to_string())
            .collect();
        let out = run_ok(rag(data).args(["ask", &q.question, "--json"]));
        let a: Value = serde_json::from_str(&out).unwrap();
        let text = a["answer"].as_str().unwrap();
        let citations = a["citations"].as_array().unwrap();
        for c in citations {
            let chunk = c["chunk_id"].as_str().unwrap();
            assert!(
                retrieved.contains(chunk),
                "{:?} cites {chunk}, which was not retrieved",
                q.question
            );
            let n = c["n"].as_u64().unwrap();
            assert!(
                text.contains(&format!("{n}")),
                "citation [{n}] not in the answer {text:?}"
            );
            assert!(!c["quote"].as_str().unwrap().is_empty());
        }
        for field in [
            "prompt_tokens",
            "completion_tokens",
            "retrieval_ms",
            "generation_ms",
        ] {
            assert!(a["usage"][field].is_u64(), "usage lacks {field}: {a}");
        }
        if a["abstained"] == true {
            assert!(citations.is_empty(), "an abstention cites sources: {a}");
        } else {
            assert!(!citations.is_empty(), "an answer without citations: {a}");
        }
        if q.answerable {
            answered += usize::from(a["abstained"] == false);
        } else {
            unanswerable += 1;
            abstained_unanswerable += usize::from(a["abstained"] == true);
        }
    }
    assert!(unanswerable >= 5);
    assert!(
        abstained_unanswerable * 5 >= unanswerable * 4,
        "only {abstained_unanswerable}/{unanswerable} unanswerable questions abstained"
    );
    // Not a requirement of the contract, but an answerer that abstains on
    // everything would pass the check above: most answerable ones answer.
    let answerable = qs.len() - unanswerable;
    assert!(
        answered * 2 > answerable,
        "only {answered}/{answerable} answerable questions answered"
    );
}

#[test]
fn reingesting_unchanged_files_embeds_nothing_and_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let wiki = dir.path().join("wiki");
    std::fs::create_dir_all(wiki.join("leave")).unwrap();
    std::fs::copy(
        root().join("fixtures/wiki/leave/vacation.md"),
        wiki.join("leave/vacation.md"),
    )
    .unwrap();
    std::fs::copy(root().join("fixtures/wiki/it/vpn.md"), wiki.join("vpn.md")).unwrap();
    let data = dir.path().join("data");
    let ingest = |data: &Path| -> Value {
        serde_json::from_str(&run_ok(rag(data).arg("ingest").arg(&wiki).arg("--json"))).unwrap()
    };
    let first = ingest(&data);
    assert_eq!(first["added"], 2);
    assert!(first["embedded_chunks"].as_u64().unwrap() >= 2);
    let second = ingest(&data);
    assert_eq!(second["unchanged"], 2);
    assert_eq!(second["embedded_chunks"], 0);

    // A source is its path relative to the folder argument.
    let hits: Vec<Value> = serde_json::from_str(&run_ok(rag(&data).args([
        "retrieve",
        "How many vacation days?",
        "--json",
    ])))
    .unwrap();
    assert_eq!(hits[0]["source"], "leave/vacation.md");

    // An edited page replaces its old version.
    std::fs::write(
        wiki.join("vpn.md"),
        "# VPN\n\nThe VPN is now called falcon-tunnel.\n",
    )
    .unwrap();
    let third = ingest(&data);
    assert_eq!(third["updated"], 1);
    let hits: Vec<Value> = serde_json::from_str(&run_ok(rag(&data).args([
        "retrieve",
        "What is the VPN called?",
        "--json",
    ])))
    .unwrap();
    let vpn: Vec<_> = hits.iter().filter(|h| h["source"] == "vpn.md").collect();
    assert_eq!(vpn.len(), 1, "both versions are visible: {hits:?}");
    assert!(vpn[0]["text"].as_str().unwrap().contains("falcon-tunnel"));

    let doctor: Value =
        serde_json::from_str(&run_ok(rag(&data).args(["doctor", "--json"]))).unwrap();
    assert_eq!(doctor["documents"], 2);
    assert_eq!(doctor["orphan_vectors"], 0);
    assert_eq!(doctor["missing_vectors"], 0);
    assert_eq!(doctor["duplicate_chunks"], 0);
    assert_eq!(doctor["chunks"], doctor["vectors"]);
}

fn fails_with(out: Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got {err:?}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

#[test]
fn bad_input_exits_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        rag(dir.path())
            .args(["ingest", "no/such/path"])
            .output()
            .unwrap(),
        "no/such/path",
    );
    let exe = dir.path().join("tool.exe");
    std::fs::write(&exe, b"MZ").unwrap();
    fails_with(
        rag(dir.path()).arg("ingest").arg(&exe).output().unwrap(),
        "unsupported file type",
    );
    let empty = tempfile::tempdir().unwrap();
    let out = rag(dir.path())
        .env("RAG_MODELS_DIR", empty.path())
        .args(["ask", "hello?"])
        .output()
        .unwrap();
    fails_with(out, "rag models fetch");
}

/// A bare HTTP/1.1 exchange; enough for two requests without pulling an
/// HTTP client crate into the build.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serve_answers_healthz_and_ask() {
    let (_turn, data) = fixture_data();
    let mut child = KillOnDrop(
        rag(data)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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

    let (status, body) = http(&addr, "GET", "/healthz", "");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/ask",
        r#"{"question":"Which password manager does the company use?"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let a: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["abstained"], false, "{a}");
    assert_eq!(a["citations"][0]["source"], "it/passwords-and-2fa.md");
    let (status, body) = http(&addr, "POST", "/v1/ask", r#"{"question": 3}"#);
    assert_eq!(status, 400);
    assert!(
        body.contains("\"error\"") && body.contains("question"),
        "{body}"
    );
    drop(child);
}

/// Stops a server even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two folders of the handbook (about 460 chunks): large enough that an
/// ingest is still running when it is killed.
fn handbook_subset() -> Vec<PathBuf> {
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

fn doctor(data: &Path) -> Value {
    serde_json::from_str(&run_ok(rag(data).args(["doctor", "--json"]))).unwrap()
}

#[test]
fn ingests_killed_at_any_moment_resume_to_the_clean_state() {
    let corpus = handbook_subset();
    let clean = tempfile::tempdir().unwrap();
    run_ok(rag(clean.path()).arg("ingest").args(&corpus));
    let expected = doctor(clean.path());
    assert!(expected["chunks"].as_u64().unwrap() > 300, "{expected}");

    let dir = tempfile::tempdir().unwrap();
    // Kill points spread over start-up, embedding and commits; fixed so a
    // failure can be replayed.
    let delays_ms = [400u64, 900, 1400, 600, 1100, 700, 1600, 500];
    let mut killed_mid_way = 0;
    for delay in delays_ms {
        let mut child = rag(dir.path())
            .arg("ingest")
            .args(&corpus)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            killed_mid_way += 1;
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush
        child.wait().unwrap();
    }
    assert!(
        killed_mid_way >= 6,
        "only {killed_mid_way} kills landed during an ingest"
    );
    // The rerun finishes the work and repairs what the kills left.
    let report: Value = serde_json::from_str(&run_ok(
        rag(dir.path()).arg("ingest").args(&corpus).arg("--json"),
    ))
    .unwrap();
    assert!(
        report["unchanged"].as_u64().unwrap() > 0,
        "the kills committed nothing: {report}"
    );
    assert!(
        report["added"].as_u64().unwrap() > 0,
        "the kills left no work: {report}"
    );
    let got = doctor(dir.path());
    assert_eq!(got, expected, "a resumed store differs from a clean ingest");
    assert_eq!(got["orphan_vectors"], 0);
    assert_eq!(got["missing_vectors"], 0);
    assert_eq!(got["duplicate_chunks"], 0);
}
