//! A Git repository (a docs-as-code wiki): a bare clone kept in the
//! source's cache folder, fetched at each sync; the files of the branch
//! (under `path`), incrementally by the diff between the last synced
//! commit and the new one.
//!
//! Through the `git` command rather than gix: a company's repository is
//! reached with the credentials, proxies, SSH keys and helpers its git is
//! already set up with, which the CLI honours and a library would have to
//! be taught; and gix's fetch would add a large compile for one command.
//! Files are read from the object database (`git cat-file`), never from a
//! checkout, and only plain files are taken: a symbolic link in the
//! repository cannot make a sync read a file of this machine.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rag_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::network::Network;
use super::{Scan, Source, fill_template};
use crate::load::extension;
use crate::{Content, Input, Limits, SUPPORTED_EXTENSIONS};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitConfig {
    /// What `git clone` takes: a path, `https://`, `ssh://` or `git@host:`.
    pub url: String,
    /// The branch; the repository's default branch when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Only files under this folder of the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Each document's web address: `{path}` is its path in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_template: Option<String>,
    /// Networks (CIDR) the remote may be on beyond the default
    /// ([`Network`]: not loopback, link-local or unspecified addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_networks: Vec<String>,
}

impl GitConfig {
    /// Whether the URL names another machine: `https://`, `ssh://` or
    /// scp-like `[user@]host:path`. A local path or `file://` reads the
    /// server's own disk, which only the CLI (run by someone who has it)
    /// may ask for.
    pub fn remote(&self) -> bool {
        let url = self.url.trim().to_ascii_lowercase();
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        matches!(scheme, None | Some("https" | "ssh")) && matches!(self.remote_host(), Ok(Some(_)))
    }

    /// The host and port a clone connects to, read the way git reads the
    /// URL; `None` for a local path or `file://`. Fails closed: a URL git
    /// would connect somewhere with, but whose host this cannot read
    /// plainly (an IPv6 zone, a scheme of its own, odd characters), is
    /// refused, never taken for a local path.
    pub(crate) fn remote_host(&self) -> Result<Option<(String, u16)>> {
        let url = self.url.trim();
        let unreadable = || {
            Error::invalid(format!(
                "--git {:?}: not a repository URL whose host can be checked (use a path, \
                 https://host/..., ssh://user@host/... or user@host:path, the host a name or \
                 an IP address)",
                redact(url)
            ))
        };
        if let Some((scheme, _)) = url.split_once("://") {
            let port = match scheme.to_ascii_lowercase().as_str() {
                "file" => return Ok(None),
                "ssh" => 22,
                "git" => 9418,
                "http" => 80,
                "https" => 443,
                _ => return Err(unreadable()),
            };
            let parsed = reqwest::Url::parse(url).map_err(|_| unreadable())?;
            let host = parsed.host_str().ok_or_else(unreadable)?;
            let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(v6) => v6
                    .parse::<std::net::Ipv6Addr>()
                    .map_err(|_| unreadable())?
                    .to_string(),
                None if plain_host(host) => host.to_string(),
                None => return Err(unreadable()),
            };
            return Ok(Some((host, parsed.port().unwrap_or(port))));
        }
        // As git reads it: a colon before any slash makes an scp-like ssh
        // address, `[user@]host:path`; anything else is a local path.
        match url.split_once(':') {
            Some((before, _)) if !before.contains('/') => {
                let host = before.rsplit_once('@').map_or(before, |(_, host)| host);
                if plain_host(host) {
                    Ok(Some((host.to_string(), 22)))
                } else {
                    Err(unreadable())
                }
            }
            _ => Ok(None),
        }
    }

    /// Refuses a remote on an address sources may not reach, and returns
    /// how git's connection is pinned to the addresses checked, so that a
    /// name cannot be rebound in between (DNS rebinding).
    fn check_network(&self) -> Result<Pin> {
        let Some((host, port)) = self.remote_host()? else {
            return Ok(Pin::None);
        };
        let addrs = Network::new(&self.allow_networks)?.check_host(&host, port)?;
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(Pin::None);
        }
        let url = self.url.trim().to_ascii_lowercase();
        if url.starts_with("https://") || url.starts_with("http://") {
            let addrs: Vec<String> = addrs
                .iter()
                .map(|ip| match ip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                })
                .collect();
            return Ok(Pin::Http(format!("{host}:{port}:{}", addrs.join(","))));
        }
        match addrs.first() {
            // ssh (`ssh://` or `user@host:path`): ssh connects to the
            // address checked and still verifies the host key the name
            // has in known_hosts. (git:// is refused over HTTP already.)
            Some(&address) if !url.starts_with("git://") => Ok(Pin::Ssh {
                alias: host,
                port,
                address,
            }),
            _ => Ok(Pin::None),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        Network::new(&self.allow_networks)?;
        let url = self.url.trim();
        if url.is_empty() {
            return Err(Error::invalid("--git needs a repository URL or path"));
        }
        // An argument, not a URL; `transport::address` runs a remote
        // helper (`ext::` runs any command).
        if url.starts_with('-') || url.contains("::") {
            return Err(Error::invalid(format!(
                "--git {:?}: not a repository URL (use a path, https://, ssh:// or host:path)",
                redact(url)
            )));
        }
        self.remote_host()?;
        if let Some(branch) = &self.branch {
            let bad = branch.is_empty()
                || branch.starts_with('-')
                || branch.contains("..")
                || branch
                    .chars()
                    .any(|c| c.is_whitespace() || "~^:?*[\\".contains(c));
            if bad {
                return Err(Error::invalid(format!(
                    "--branch {branch:?}: not a branch name"
                )));
            }
        }
        if let Some(path) = &self.path {
            let bad = path.starts_with('/')
                || path.split('/').any(|s| s == "..")
                || path.starts_with(':')
                || path.starts_with('-');
            if bad {
                return Err(Error::invalid(format!(
                    "--path {path:?}: give a folder inside the repository, like docs/handbook"
                )));
            }
        }
        if let Some(t) = &self.url_template
            && !t.contains("{path}")
        {
            return Err(Error::invalid(format!(
                "--url-template {t:?}: it must contain {{path}}, where each document's path \
                 in the repository goes"
            )));
        }
        // The address becomes a link on the chat page: javascript: or
        // data: there would run in the reader's browser.
        if let Some(t) = &self.url_template {
            let lower = t.trim().to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                return Err(Error::invalid(format!(
                    "--url-template {:?}: give an http:// or https:// address",
                    redact(t)
                )));
            }
        }
        Ok(())
    }

    fn subdir(&self) -> Option<&str> {
        self.path
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty() && *p != ".")
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    commit: Option<String>,
}

#[derive(Clone)]
pub(crate) struct GitSource {
    config: GitConfig,
    /// The bare clone.
    repo: PathBuf,
}

impl GitSource {
    pub(crate) fn new(config: GitConfig, cache: &Path) -> Self {
        Self {
            config,
            repo: cache.join("repo.git"),
        }
    }

    fn scan_blocking(
        &self,
        state: &State,
        retry: &[String],
        known: &HashSet<String>,
        limits: &Limits,
    ) -> Result<Scan> {
        self.config.validate()?;
        self.fetch(limits.source_timeout)?;
        let branch = match &self.config.branch {
            Some(b) => b.clone(),
            None => text(&git(
                Some(&self.repo),
                &["symbolic-ref", "--short", "HEAD"],
            )?),
        };
        let commit = git(
            Some(&self.repo),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
        )
        .map(|out| text(&out))
        .map_err(|_| {
            Error::invalid(format!(
                "branch {branch:?} not found in {}",
                redact(&self.config.url)
            ))
        })?;
        // The last synced commit, if the repository still has it (a force
        // push or a new branch may have dropped it): then only the diff.
        let since = state
            .commit
            .as_ref()
            .filter(|_| state.branch.as_deref() == Some(branch.as_str()))
            .filter(|old| {
                git(
                    Some(&self.repo),
                    &["cat-file", "-e", &format!("{old}^{{commit}}")],
                )
                .is_ok()
            });
        let mut scan = Scan {
            state: serde_json::json!({ "branch": branch, "commit": commit }),
            ..Default::default()
        };
        let mut files: Vec<(String, String)> = Vec::new(); // (path, blob id)
        match since {
            Some(old) => {
                let mut args = vec![
                    "diff-tree",
                    "-r",
                    "-z",
                    "--no-renames",
                    "--raw",
                    old.as_str(),
                    commit.as_str(),
                ];
                args.extend(self.pathspec());
                let out = git(Some(&self.repo), &args)?;
                let fields: Vec<&[u8]> = out.split(|&b| b == 0).collect();
                let mut i = 0;
                while i + 1 < fields.len() {
                    let meta = String::from_utf8_lossy(fields[i]);
                    let path = String::from_utf8_lossy(fields[i + 1]).into_owned();
                    i += 2;
                    // `:old-mode new-mode old-id new-id status`
                    let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
                    let [_, mode, _, id, status] = parts[..] else {
                        continue;
                    };
                    if !wanted(&path) {
                        continue;
                    }
                    if status.starts_with('D') || !plain_file(mode) {
                        scan.deleted.push(path);
                    } else {
                        files.push((path, id.to_string()));
                    }
                }
                // The commit's whole listing, not only the diff: what failed
                // last time, or is missing from the store (deleted by
                // hand), is read again; the rest is unchanged, and what
                // the store has beyond the listing goes.
                let listed: HashSet<String> = files.iter().map(|(p, _)| p.clone()).collect();
                let deleted: HashSet<&String> = scan.deleted.iter().collect();
                let mut again = Vec::new();
                for (path, id) in self.tree(&commit)? {
                    if listed.contains(&path) || deleted.contains(&path) {
                        continue;
                    }
                    if known.contains(&path) && !retry.contains(&path) {
                        scan.unchanged.push(path);
                    } else {
                        again.push((path, id));
                    }
                }
                files.extend(again);
                scan.complete = true;
            }
            None => {
                files = self.tree(&commit)?;
                scan.complete = true;
            }
        }
        let sizes = self.sizes(&files)?;
        for ((path, id), size) in files.into_iter().zip(sizes) {
            if size > limits.max_bytes {
                scan.failed.push((
                    path,
                    format!(
                        "{size} bytes: larger than the {} bytes a document may be \
                         (ingest.max_document_mb)",
                        limits.max_bytes
                    ),
                ));
                continue;
            }
            let repo = self.repo.clone();
            let read =
                move || -> Result<Vec<u8>> { git(Some(&repo), &["cat-file", "blob", id.as_str()]) };
            scan.documents.push(Input::Fetched {
                url: self
                    .config
                    .url_template
                    .as_deref()
                    .map(|t| fill_template(t, &path)),
                name: path.clone(),
                source: path,
                content: Content::Read(Arc::new(read)),
            });
        }
        Ok(scan)
    }

    fn pathspec(&self) -> Vec<&str> {
        match self.config.subdir() {
            Some(dir) => vec!["--", dir],
            None => vec![],
        }
    }

    /// Clones the repository (into a temporary folder, renamed when done,
    /// so a crash never leaves half a clone), or fetches its branches.
    fn fetch(&self, timeout: Duration) -> Result<()> {
        let pin = self
            .config
            .check_network()
            .map_err(|e| Error::new(e.kind(), redact(e.message())))?;
        let (pinned, ssh) = pin.options();
        let mut options: Vec<&str> = Vec::new();
        if let Some(pinned) = &pinned {
            options.extend(["-c", pinned.as_str()]);
        }
        let network = GitNetwork {
            options: &options,
            ssh: &ssh,
        };
        let url = self.config.url.trim();
        if self.repo.join("HEAD").exists() {
            git_within(
                timeout,
                Some(&self.repo),
                &network,
                &[
                    "fetch",
                    "--quiet",
                    "--prune",
                    "--no-tags",
                    "origin",
                    "+refs/heads/*:refs/heads/*",
                ],
            )
            .map_err(|e| Error::invalid(format!("fetching {}: {e}", redact(url))))?;
            return Ok(());
        }
        let parent = self.repo.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::unavailable(format!("creating {}", parent.display())).with_source(e)
        })?;
        // Its own name: two syncs of one source never share a partial clone.
        let partial = parent.join(format!(
            "repo.git.partial-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let partial_str = partial.to_string_lossy().into_owned();
        let mut args = vec!["clone", "--bare", "--quiet", "--no-tags"];
        if let Some(b) = &self.config.branch {
            args.extend(["--branch", b.as_str()]);
        }
        args.extend(["--", url, partial_str.as_str()]);
        let cloned = git_within(timeout, None, &network, &args)
            .map_err(|e| Error::invalid(format!("cloning {}: {e}", redact(url))));
        if let Err(e) = cloned {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        if std::fs::rename(&partial, &self.repo).is_err() {
            // Another sync got there first: its clone serves.
            let _ = std::fs::remove_dir_all(&partial);
            if !self.repo.join("HEAD").exists() {
                return Err(Error::unavailable(format!(
                    "moving the clone to {}",
                    self.repo.display()
                )));
            }
        }
        Ok(())
    }

    /// Every plain file of a supported type under `path` at `commit`.
    fn tree(&self, commit: &str) -> Result<Vec<(String, String)>> {
        let mut args = vec!["ls-tree", "-r", "-z", "--full-tree", commit];
        args.extend(self.pathspec());
        let out = git(Some(&self.repo), &args)?;
        Ok(out
            .split(|&b| b == 0)
            .filter_map(|entry| {
                // `mode type id\tpath`
                let entry = String::from_utf8_lossy(entry);
                let (meta, path) = entry.split_once('\t')?;
                let mut meta = meta.split(' ');
                let (mode, kind, id) = (meta.next()?, meta.next()?, meta.next()?);
                (kind == "blob" && plain_file(mode) && wanted(path))
                    .then(|| (path.to_string(), id.to_string()))
            })
            .collect())
    }

    /// The size of each file's blob, in one `git cat-file --batch-check`.
    fn sizes(&self, files: &[(String, String)]) -> Result<Vec<usize>> {
        if files.is_empty() {
            return Ok(vec![]);
        }
        let mut input = String::new();
        for (_, id) in files {
            input.push_str(id);
            input.push('\n');
        }
        let out = git_with_input(
            Some(&self.repo),
            &["cat-file", "--batch-check"],
            &input,
            None,
        )?;
        let sizes: Vec<usize> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX)
            })
            .collect();
        if sizes.len() != files.len() {
            return Err(Error::internal("git cat-file --batch-check: short answer"));
        }
        Ok(sizes)
    }
}

#[async_trait]
impl Source for GitSource {
    async fn scan(
        &self,
        state: &serde_json::Value,
        retry: &[String],
        known: &HashSet<String>,
        limits: &Limits,
    ) -> Result<Scan> {
        let state: State = serde_json::from_value(state.clone()).unwrap_or_default();
        let (this, retry, known, limits) = (self.clone(), retry.to_vec(), known.clone(), *limits);
        tokio::task::spawn_blocking(move || this.scan_blocking(&state, &retry, &known, &limits))
            .await
            .map_err(|e| Error::internal("a blocking task failed").with_source(e))?
    }
}

/// A regular file (not a link, not a submodule).
/// A host name as DNS has them (letters, digits, dots, hyphens and
/// underscores), or an IPv4 address: nothing a shell or ssh would read as
/// more than a name.
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn plain_file(mode: &str) -> bool {
    matches!(mode, "100644" | "100755")
}

fn wanted(path: &str) -> bool {
    SUPPORTED_EXTENSIONS.contains(&extension(Path::new(path)).as_str())
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).trim().to_string()
}

fn git(dir: Option<&Path>, args: &[&str]) -> Result<Vec<u8>> {
    git_with_input(dir, args, "", None)
}

/// [`git`] over the network: killed when it runs past `timeout`, and
/// given up by git itself on a transfer slower than 1 KB/s for as long,
/// or an ssh connection that does not open in time.
fn git_within(
    timeout: Duration,
    dir: Option<&Path>,
    network: &GitNetwork<'_>,
    args: &[&str],
) -> Result<Vec<u8>> {
    let seconds = timeout.as_secs().max(1).to_string();
    let low_speed = format!("http.lowSpeedTime={seconds}");
    let mut all = vec!["-c", "http.lowSpeedLimit=1000", "-c", low_speed.as_str()];
    all.extend_from_slice(network.options);
    all.extend_from_slice(args);
    git_with_input(dir, &all, "", Some((timeout, network.ssh)))
}

/// How a fetch's connection is held to the addresses the network rule
/// checked ([`GitConfig::check_network`]).
#[derive(Debug, PartialEq)]
enum Pin {
    /// A path, an IP literal: nothing is resolved again.
    None,
    /// An http(s) remote: git's `http.curloptResolve` entry.
    Http(String),
    /// An ssh remote named by a name: ssh connects to `address`, and
    /// checks the host key known for `alias` (the name) on `port`.
    Ssh {
        alias: String,
        port: u16,
        address: std::net::IpAddr,
    },
}

impl Pin {
    /// The `-c` setting for git and the options for ssh.
    fn options(&self) -> (Option<String>, String) {
        match self {
            Pin::None => (None, String::new()),
            Pin::Http(entry) => (Some(format!("http.curloptResolve={entry}")), String::new()),
            // known_hosts names a host on another port `[host]:port`, and
            // HostKeyAlias replaces that whole key. Quoted for the shell
            // git runs the command with (the alias is a plain host name,
            // checked, and brackets are shell patterns).
            Pin::Ssh {
                alias,
                port,
                address,
            } => {
                let alias = match port {
                    22 => alias.clone(),
                    port => format!("[{alias}]:{port}"),
                };
                (
                    None,
                    format!("-o 'HostName={address}' -o 'HostKeyAlias={alias}'"),
                )
            }
        }
    }
}

/// What a network git command adds to its arguments: `-c` settings for
/// git, and options for ssh.
struct GitNetwork<'a> {
    options: &'a [&'a str],
    ssh: &'a str,
}

/// Runs git with no terminal (it never waits for a password), only the
/// ordinary transports, and pathspecs taken literally.
fn git_with_input(
    dir: Option<&Path>,
    args: &[&str],
    input: &str,
    timeout: Option<(Duration, &str)>,
) -> Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    // No redirects: a remote checked against the network rule could
    // otherwise send git on to one that is not.
    cmd.arg("--literal-pathspecs")
        .args(["-c", "protocol.ext.allow=never"])
        .args(["-c", "http.followRedirects=false"]);
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .env(
            "GIT_SSH_COMMAND",
            match timeout {
                Some((t, pin)) => format!(
                    "ssh -o BatchMode=yes -o ConnectTimeout={} -o ServerAliveInterval=15 {pin}",
                    t.as_secs().max(1)
                ),
                None => "ssh -o BatchMode=yes".to_string(),
            },
        )
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::unavailable("running git (is it installed and on PATH?)").with_source(e)
    })?;
    if !input.is_empty() {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_string();
        // Written from a thread: git answers as it reads, and a full pipe
        // either way would block both.
        std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    }
    let out = match timeout {
        None => child
            .wait_with_output()
            .map_err(|e| Error::unavailable("running git").with_source(e))?,
        Some((timeout, _)) => wait_within(child, timeout).map_err(|e| match e {
            Waited::Late => Error::unavailable(format!(
                "git {} took longer than {} s (sources.timeout_s): the remote does not answer",
                subcommand(args),
                timeout.as_secs_f64()
            )),
            Waited::Failed(e) => Error::unavailable("running git").with_source(e),
        })?,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::invalid(format!(
            "git {} failed: {}",
            subcommand(args),
            redact(if message.is_empty() {
                "no message"
            } else {
                &message
            })
        )));
    }
    Ok(out.stdout)
}

/// The git command `args` run, past the `-c name=value` options.
fn subcommand<'a>(args: &[&'a str]) -> &'a str {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if *arg == "-c" {
            rest.next();
        } else if !arg.starts_with('-') {
            return arg;
        }
    }
    "command"
}

enum Waited {
    Late,
    Failed(std::io::Error),
}

/// `child`'s output, or `Late` (and the child killed) past `timeout`. The
/// pipes are read as it runs: a full pipe would block it.
fn wait_within(
    mut child: std::process::Child,
    timeout: Duration,
) -> std::result::Result<std::process::Output, Waited> {
    use std::io::Read;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Waited::Failed)? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Waited::Late);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// A URL or message without the user information (a password, a token)
/// of any `scheme://...@` in it.
pub(crate) fn redact(text: &str) -> String {
    // Any user information: `user:password@` and a token alone (`ghp_...@`).
    static CREDENTIALS: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"://[^/@\s]+@").unwrap());
    CREDENTIALS.replace_all(text, "://***@").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> GitConfig {
        GitConfig {
            url: url.into(),
            branch: None,
            path: None,
            url_template: None,
            allow_networks: vec![],
        }
    }

    #[test]
    fn the_host_a_clone_connects_to() {
        for (url, host) in [
            ("https://git.example/wiki.git", Some(("git.example", 443))),
            (
                "https://bot:pw@127.0.0.2:8443/w.git",
                Some(("127.0.0.2", 8443)),
            ),
            ("ssh://git@[::1]/w.git", Some(("::1", 22))),
            ("git@localhost:team/w.git", Some(("localhost", 22))),
            ("git://127.0.0.1/w.git", Some(("127.0.0.1", 9418))),
            // git reads a colon before any slash as ssh, user or not.
            ("localhost:team/w.git", Some(("localhost", 22))),
            ("/srv/wiki", None),
            ("./wiki", None),
            ("file:///srv/wiki", None),
        ] {
            let found = config(url).remote_host().unwrap();
            assert_eq!(found.as_ref().map(|(h, p)| (h.as_str(), *p)), host, "{url}");
        }
        // What git would connect with but cannot be read plainly is
        // refused, never taken for a local path: an IPv6 zone (git goes to
        // ::ffff:127.0.0.1 on lo), a scheme of its own, shell characters.
        for url in [
            "https://[0:0:0:0:0:ffff:7f00:1%25lo]:8443/w.git",
            "https://[0:0:0:0:0:0:0:1%25lo]/w.git",
            "ssh://git@[::ffff:a9fe:a9fe%25eth0]/w.git",
            "gopher://git.example/w.git",
            "ssh://git@$(id)/w.git",
            "git@$(id):w.git",
            "git@a;b:w.git",
            "git@[::1]:w.git",
        ] {
            let err = config(url).remote_host().unwrap_err().to_string();
            assert!(err.contains("whose host can be checked"), "{url}: {err}");
            assert!(config(url).validate().is_err(), "{url}");
            assert!(!config(url).remote(), "{url}");
        }
        let err = config("https://127.0.0.1/w.git")
            .check_network()
            .unwrap_err();
        assert!(err.to_string().contains("--allow-network"), "{err}");
        let allowed = |url: &str| GitConfig {
            allow_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            ..config(url)
        };
        assert_eq!(
            allowed("https://127.0.0.1/w.git").check_network().unwrap(),
            Pin::None
        );
        // A name over http(s) is pinned to the addresses checked.
        let Pin::Http(pin) = allowed("https://localhost:8443/w.git")
            .check_network()
            .unwrap()
        else {
            panic!("an https remote is pinned with curloptResolve");
        };
        assert!(pin.starts_with("localhost:8443:"), "{pin}");
        assert!(pin.contains("127.0.0.1") || pin.contains("[::1]"), "{pin}");
        // Over ssh, to one address checked, the host key still the name's.
        for (url, key) in [
            ("ssh://git@localhost/w.git", "localhost"),
            ("git@localhost:team/w.git", "localhost"),
            // known_hosts keys a host on another port as [host]:port.
            ("ssh://git@localhost:2222/w.git", "[localhost]:2222"),
        ] {
            let pin = allowed(url).check_network().unwrap();
            let Pin::Ssh { alias, address, .. } = &pin else {
                panic!("{url}: {pin:?}");
            };
            assert_eq!(alias, "localhost");
            assert!(address.is_loopback(), "{address}");
            let (git, ssh) = pin.options();
            assert_eq!(git, None);
            assert_eq!(
                ssh,
                format!("-o 'HostName={address}' -o 'HostKeyAlias={key}'")
            );
        }
        // Refused before any connection, like https.
        let err = config("ssh://git@localhost/w.git")
            .check_network()
            .unwrap_err();
        assert!(err.to_string().contains("--allow-network"), "{err}");
    }

    #[test]
    fn remote_urls_name_another_machine() {
        for remote in [
            "https://git.example/wiki.git",
            "ssh://git@git.example/wiki.git",
            "git@git.example:team/wiki.git",
            // git (on Unix) reads these as ssh to git.example and to C.
            "git.example:team/wiki.git",
            "C:/wiki",
        ] {
            assert!(config(remote).remote(), "{remote}");
        }
        for local in [
            "/srv/wiki",
            "./wiki",
            "wiki",
            "file:///srv/wiki",
            "http://git.example/wiki.git",
            "git://git.example/wiki.git",
            "./a@b:c",
        ] {
            assert!(!config(local).remote(), "{local}");
        }
    }

    #[test]
    fn settings_that_would_run_something_else_are_refused() {
        for url in ["", "--upload-pack=touch /tmp/x", "ext::sh -c touch% /tmp/x"] {
            assert!(config(url).validate().is_err(), "{url:?}");
        }
        assert!(config("/srv/wiki.git").validate().is_ok());
        assert!(config("git@git.example:wiki.git").validate().is_ok());
        let branch = GitConfig {
            branch: Some("--orphan".into()),
            ..config("/srv/wiki.git")
        };
        assert!(branch.validate().is_err());
        let path = GitConfig {
            path: Some("../etc".into()),
            ..config("/srv/wiki.git")
        };
        assert!(path.validate().is_err());
        let template = GitConfig {
            url_template: Some("https://git.example/wiki".into()),
            ..config("/srv/wiki.git")
        };
        let err = template.validate().unwrap_err();
        assert!(err.to_string().contains("{path}"), "{err}");
        for bad in [
            "javascript:alert(1)//{path}",
            "data:text/html,{path}",
            "/wiki/{path}",
        ] {
            let template = GitConfig {
                url_template: Some(bad.into()),
                ..config("/srv/wiki.git")
            };
            let err = template.validate().unwrap_err();
            assert!(err.to_string().contains("https://"), "{bad}: {err}");
        }
    }

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redact("fatal: unable to access 'https://bot:s3cr3t@git.example/wiki.git/'"),
            "fatal: unable to access 'https://***@git.example/wiki.git/'"
        );
        assert_eq!(
            redact("https://ghp_token@git.example/wiki.git"),
            "https://***@git.example/wiki.git"
        );
        assert_eq!(
            redact("git@git.example:wiki.git"),
            "git@git.example:wiki.git"
        );
    }
}
