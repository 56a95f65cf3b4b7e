//! The data-parallel ranks' link: rank 0 listens, the others connect, and
//! every collective operation is one round through rank 0 over TCP.
//!
//! The environment is PyTorch's (`torchrun`, `srun` wrappers, Kubernetes
//! Indexed Jobs set it): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR` (default `127.0.0.1`) and
//! `MASTER_PORT` (default 29500). `kiln train --nproc N` sets it for N
//! local workers ([`super::launch::spawn_local`]).
//!
//! A round: every other rank sends its part to rank 0; rank 0 reads them in
//! rank order, computes the answer and sends it back. The reduction is
//! therefore in a fixed order (rank 0, 1, 2, ...) in f64: the same inputs
//! give the same bits, run after run, whatever the timing.
//!
//! Failure: a rank whose process ends closes its connection, and the peer
//! reading from it fails at once ("rank N went away"); a rank that stops
//! answering fails the others after `KILN_DIST_TIMEOUT` seconds (default
//! 600). Rank 0 failing closes every link, so every rank exits with an
//! error instead of waiting: the job is then resumed from its last
//! checkpoint.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where this process stands among the ranks, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master: String,
    pub port: u16,
}

impl DistEnv {
    /// The ranks the environment describes; `None` for a single process
    /// (no `WORLD_SIZE`, or 1). A malformed value is refused, naming it.
    pub fn from_env() -> Result<Option<DistEnv>> {
        DistEnv::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let number = |k: &str| -> Result<Option<usize>> {
            var(k)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::Config(format!("{k}={v:?} is not a non-negative integer"))
                    })
                })
                .transpose()
        };
        let world = number("WORLD_SIZE")?.unwrap_or(1);
        if world == 0 {
            return Err(Error::Config("WORLD_SIZE=0: at least one rank".into()));
        }
        if world == 1 {
            return Ok(None);
        }
        let rank = number("RANK")?.ok_or_else(|| {
            Error::Config(format!(
                "WORLD_SIZE={world} without RANK: every process needs its rank"
            ))
        })?;
        if rank >= world {
            return Err(Error::Config(format!(
                "RANK={rank} is not below WORLD_SIZE={world}"
            )));
        }
        let port = match var("MASTER_PORT") {
            None => 29500,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| Error::Config(format!("MASTER_PORT={p:?} is not a port")))?,
        };
        Ok(Some(DistEnv {
            rank,
            world,
            local_rank: number("LOCAL_RANK")?.unwrap_or(0),
            master: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            port,
        }))
    }
}

/// How long a rank waits for another before failing.
fn timeout() -> Duration {
    let s = std::env::var("KILN_DIST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(600.0);
    Duration::from_secs_f64(s)
}

struct Link {
    rank: usize,
    read: BufReader<TcpStream>,
    write: BufWriter<TcpStream>,
}

impl Link {
    fn new(rank: usize, s: TcpStream, wait: Duration) -> Result<Link> {
        let io = |e| Error::io(format!("rank {rank}: set up its link"), e);
        s.set_nodelay(true).map_err(io)?;
        let link = Link {
            rank,
            read: BufReader::with_capacity(1 << 20, s.try_clone().map_err(io)?),
            write: BufWriter::with_capacity(1 << 20, s),
        };
        link.timeouts(wait)?;
        Ok(link)
    }

    /// How long a read or a write may wait.
    fn timeouts(&self, wait: Duration) -> Result<()> {
        let s = self.write.get_ref();
        let io = |e| Error::io(format!("rank {}: set up its link", self.rank), e);
        s.set_read_timeout(Some(wait)).map_err(io)?;
        s.set_write_timeout(Some(wait)).map_err(io)
    }

    /// A broken or silent link: an I/O error, so the exit code says a
    /// retry (a resume) may succeed.
    fn failed(&self, e: std::io::Error, wait: Duration) -> Error {
        use std::io::ErrorKind::*;
        let r = self.rank;
        let what = match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => format!(
                "rank {r} went away (its process ended or its connection dropped); resume from the last checkpoint"
            ),
            WouldBlock | TimedOut => format!(
                "rank {r} did not answer within {:.0} s (KILN_DIST_TIMEOUT); resume from the last checkpoint",
                wait.as_secs_f64()
            ),
            _ => format!("the link to rank {r} failed"),
        };
        Error::io(what, e)
    }

    /// One frame: a status byte (0 data, 1 an error message), a length, the
    /// bytes.
    fn send(&mut self, status: u8, bytes: &[u8], wait: Duration) -> Result<()> {
        let mut go = || -> std::io::Result<()> {
            self.write.write_all(&[status])?;
            self.write.write_all(&(bytes.len() as u64).to_le_bytes())?;
            self.write.write_all(bytes)?;
            self.write.flush()
        };
        go().map_err(|e| self.failed(e, wait))
    }

    fn recv(&mut self, wait: Duration) -> Result<Vec<u8>> {
        self.recv_at_most(u64::MAX, wait)
    }

    /// A frame of at most `limit` bytes (a longer one is an error).
    fn recv_at_most(&mut self, limit: u64, wait: Duration) -> Result<Vec<u8>> {
        let mut go = || -> std::io::Result<(u8, Vec<u8>)> {
            let mut head = [0u8; 9];
            self.read.read_exact(&mut head)?;
            let n = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
            if n > limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a frame of {n} bytes where at most {limit} were expected"),
                ));
            }
            let mut buf = vec![0u8; n as usize];
            self.read.read_exact(&mut buf)?;
            Ok((head[0], buf))
        };
        match go() {
            Ok((0, buf)) => Ok(buf),
            Ok((_, msg)) => Err(Error::Execution(String::from_utf8_lossy(&msg).into_owned())),
            Err(e) => Err(self.failed(e, wait)),
        }
    }
}

/// This rank's links: to every other rank (rank 0), or to rank 0.
pub struct Peer {
    pub rank: usize,
    pub world: usize,
    links: Vec<Link>,
    wait: Duration,
}

const MAGIC: &[u8; 8] = b"kilnddp1";
/// A rank's hello: the magic, rank, world and fingerprint.
const HELLO_MAX: u64 = 1 << 16;
const HELLO_WAIT: Duration = Duration::from_secs(10);

impl Peer {
    /// Connect the ranks: rank 0 listens on `MASTER_ADDR:MASTER_PORT` and
    /// waits for the others; every rank presents `fingerprint` (what must
    /// be the same on all ranks: the training file, the dataset, the
    /// world), and a rank whose fingerprint differs is refused.
    pub fn join(env: &DistEnv, fingerprint: &str) -> Result<Peer> {
        let wait = timeout();
        let deadline = Instant::now() + wait;
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&(env.rank as u64).to_le_bytes());
        hello.extend_from_slice(&(env.world as u64).to_le_bytes());
        hello.extend_from_slice(fingerprint.as_bytes());
        let where_ = format!("{}:{}", env.master, env.port);
        if env.rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", env.port)).map_err(|e| {
                Error::io(
                    format!("rank 0 cannot listen on port {} (MASTER_PORT)", env.port),
                    e,
                )
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| Error::io("rank 0: listen", e))?;
            let mut links: Vec<Option<Link>> = (1..env.world).map(|_| None).collect();
            // A refusal goes to every rank that joined, then the error.
            let refuse = |links: &mut Vec<Option<Link>>, why: String| {
                for l in links.iter_mut().flatten() {
                    let _ = l.send(1, why.as_bytes(), wait);
                }
                Err(Error::Config(why))
            };
            while links.iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((s, from)) => {
                        s.set_nonblocking(false)
                            .map_err(|e| Error::io("rank 0: accept", e))?;
                        // A connection that is not a kiln rank (or says
                        // nothing for 10 s) is dropped, not fatal.
                        let mut link = Link::new(0, s, HELLO_WAIT)?;
                        let theirs = match link.recv_at_most(HELLO_MAX, HELLO_WAIT) {
                            Ok(h) if h.starts_with(MAGIC) => h,
                            Ok(_) | Err(_) => {
                                eprintln!(
                                    "kiln: rank 0: dropped a connection from {from} that is not a kiln rank"
                                );
                                continue;
                            }
                        };
                        let rank = match check_hello(&theirs, env.world, fingerprint) {
                            Ok(r) if r > 0 && r < env.world && links[r - 1].is_none() => r,
                            Ok(r) => {
                                let why = format!("rank {r} joined twice or is out of range");
                                let _ = link.send(1, why.as_bytes(), wait);
                                return refuse(&mut links, why);
                            }
                            Err(why) => {
                                let _ = link.send(1, why.as_bytes(), wait);
                                return refuse(&mut links, why);
                            }
                        };
                        link.rank = rank;
                        link.timeouts(wait)?;
                        links[rank - 1] = Some(link);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            let missing: Vec<String> = links
                                .iter()
                                .enumerate()
                                .filter(|(_, l)| l.is_none())
                                .map(|(i, _)| (i + 1).to_string())
                                .collect();
                            return Err(Error::io(
                                format!(
                                    "rank 0: ranks {} did not join within {:.0} s (KILN_DIST_TIMEOUT)",
                                    missing.join(", "),
                                    wait.as_secs_f64()
                                ),
                                std::io::ErrorKind::TimedOut.into(),
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(Error::io("rank 0: accept", e)),
                }
            }
            let mut peer = Peer {
                rank: 0,
                world: env.world,
                links: links.into_iter().map(|l| l.expect("joined")).collect(),
                wait,
            };
            // Everyone joined: tell them.
            for l in &mut peer.links {
                l.send(0, b"", wait)?;
            }
            Ok(peer)
        } else {
            let addr = where_
                .to_socket_addrs()
                .map_err(|e| {
                    Error::Config(format!(
                        "MASTER_ADDR:MASTER_PORT = {where_} does not resolve: {e}"
                    ))
                })?
                .next()
                .ok_or_else(|| Error::Config(format!("{where_} resolves to no address")))?;
            let stream = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(Error::io(
                            format!(
                                "rank {}: cannot reach rank 0 at {where_} within {:.0} s",
                                env.rank,
                                wait.as_secs_f64()
                            ),
                            e,
                        ));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let mut link = Link::new(0, stream, wait)?;
            link.send(0, &hello, wait)?;
            link.recv(wait)?;
            Ok(Peer {
                rank: env.rank,
                world: env.world,
                links: vec![link],
                wait,
            })
        }
    }

    /// One round: rank 0 gets every rank's part (its own first), `answer`
    /// makes what each rank gets back; the others get theirs.
    fn round(
        &mut self,
        mine: Vec<u8>,
        answer: impl FnOnce(Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        let wait = self.wait;
        if self.rank != 0 {
            let link = &mut self.links[0];
            link.send(0, &mine, wait)?;
            return link.recv(wait);
        }
        let mut parts = Vec::with_capacity(self.world);
        parts.push(mine);
        for l in &mut self.links {
            parts.push(l.recv(wait)?);
        }
        match answer(parts) {
            Ok(mut replies) => {
                for (l, r) in self.links.iter_mut().zip(replies.drain(1..)) {
                    l.send(0, &r, wait)?;
                }
                Ok(replies.pop().expect("rank 0's answer"))
            }
            Err(e) => {
                for l in &mut self.links {
                    let _ = l.send(1, e.to_string().as_bytes(), wait);
                }
                Err(e)
            }
        }
    }

    /// The average of every rank's `v`, weighted by its `weight` (the rows
    /// it saw), and the sum of the weights. Ranks of weight 0 count for
    /// nothing; when every weight is 0 the average is zeros.
    pub fn weighted_mean(&mut self, v: &[f32], weight: f64) -> Result<(Vec<f32>, f64)> {
        let n = v.len();
        let mut mine = Vec::with_capacity(8 + 4 * n);
        mine.extend_from_slice(&weight.to_le_bytes());
        for x in v {
            mine.extend_from_slice(&x.to_le_bytes());
        }
        let back = self.round(mine, |parts| {
            let mut sum = vec![0f64; n];
            let mut total = 0f64;
            for (r, p) in parts.iter().enumerate() {
                if p.len() != 8 + 4 * n {
                    return Err(Error::Execution(format!(
                        "rank {r} sent {} values, rank 0 has {n}: the ranks' models differ",
                        p.len().saturating_sub(8) / 4
                    )));
                }
                let w = f64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                if w == 0.0 {
                    continue;
                }
                total += w;
                for (s, c) in sum.iter_mut().zip(p[8..].chunks_exact(4)) {
                    *s += w * f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64;
                }
            }
            let mut out = Vec::with_capacity(8 + 4 * n);
            out.extend_from_slice(&total.to_le_bytes());
            for s in sum {
                let m = if total > 0.0 { s / total } else { 0.0 };
                out.extend_from_slice(&(m as f32).to_le_bytes());
            }
            Ok(vec![out; parts.len()])
        })?;
        let total = f64::from_le_bytes(back[..8].try_into().expect("8 bytes"));
        let mean = back[8..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok((mean, total))
    }

    /// The sum over the ranks of `v`, in f64.
    pub fn sum(&mut self, v: &[f64]) -> Result<Vec<f64>> {
        let n = v.len();
        let mine: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let back = self.round(mine, |parts| {
            let mut sum = vec![0f64; n];
            for p in &parts {
                for (s, c) in sum.iter_mut().zip(p.chunks_exact(8)) {
                    *s += f64::from_le_bytes(c.try_into().expect("8 bytes"));
                }
            }
            let out: Vec<u8> = sum.iter().flat_map(|x| x.to_le_bytes()).collect();
            Ok(vec![out; parts.len()])
        })?;
        Ok(back
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// Every rank's `part`, in rank order, on every rank.
    pub fn all_gather(&mut self, part: &[f32]) -> Result<Vec<Vec<f32>>> {
        let mine: Vec<u8> = part.iter().flat_map(|x| x.to_le_bytes()).collect();
        let back = self.round(mine, |parts| {
            let mut out = Vec::new();
            for p in &parts {
                out.extend_from_slice(&(p.len() as u64).to_le_bytes());
                out.extend_from_slice(p);
            }
            Ok(vec![out; parts.len()])
        })?;
        let mut parts = Vec::with_capacity(self.world);
        let mut at = 0;
        while at + 8 <= back.len() {
            let n = u64::from_le_bytes(back[at..at + 8].try_into().expect("8 bytes")) as usize;
            at += 8;
            parts.push(
                back[at..at + n]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            );
            at += n;
        }
        Ok(parts)
    }

    /// Every rank's `what` must be the same bytes: an error naming the
    /// first rank that differs from rank 0.
    pub fn agree(&mut self, what: &str, value: &[u8]) -> Result<()> {
        let what = what.to_string();
        self.round(value.to_vec(), move |parts| {
            match parts.iter().position(|p| p != &parts[0]) {
                Some(r) => Err(Error::Execution(format!(
                    "rank {r}'s {what} differs from rank 0's"
                ))),
                None => Ok(vec![Vec::new(); parts.len()]),
            }
        })
        .map(|_| ())
    }

    /// Every rank waits for all the others.
    pub fn barrier(&mut self) -> Result<()> {
        self.round(Vec::new(), |parts| Ok(vec![Vec::new(); parts.len()]))
            .map(|_| ())
    }
}

fn check_hello(
    hello: &[u8],
    world: usize,
    fingerprint: &str,
) -> std::result::Result<usize, String> {
    if hello.len() < 24 || &hello[..8] != MAGIC {
        return Err("a connection that is not a kiln rank reached rank 0".into());
    }
    let rank = u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes")) as usize;
    let theirs = u64::from_le_bytes(hello[16..24].try_into().expect("8 bytes")) as usize;
    if theirs != world {
        return Err(format!(
            "rank {rank} has WORLD_SIZE={theirs}, rank 0 has {world}"
        ));
    }
    let theirs = String::from_utf8_lossy(&hello[24..]);
    if theirs != fingerprint {
        return Err(format!(
            "rank {rank} trains another run than rank 0 ({theirs} against {fingerprint}): the training file, the dataset or the model differ"
        ));
    }
    Ok(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_read_as_pytorch_writes_it() {
        let env = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            DistEnv::from_vars(move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
        let d = env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (d.rank, d.world, d.local_rank, d.master.as_str(), d.port),
            (2, 4, 0, "node1", 1234)
        );
        for (pairs, says) in [
            (vec![("WORLD_SIZE", "2")], "without RANK"),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "2")],
                "RANK=2 is not below",
            ),
            (
                vec![("WORLD_SIZE", "two"), ("RANK", "0")],
                "WORLD_SIZE=\"two\"",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "99999")],
                "MASTER_PORT",
            ),
        ] {
            let e = env(&pairs).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    /// `n` ranks on threads, each running `f`.
    fn ranks<T: Send + 'static>(
        n: usize,
        f: impl Fn(&mut Peer) -> Result<T> + Send + Sync + Clone + 'static,
    ) -> Vec<Result<T>> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let handles: Vec<_> = (0..n)
            .map(|rank| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let env = DistEnv {
                        rank,
                        world: n,
                        local_rank: rank,
                        master: "127.0.0.1".into(),
                        port,
                    };
                    let mut p = Peer::join(&env, "same")?;
                    f(&mut p)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn ranks_average_by_their_rows_in_a_fixed_order() {
        let out = ranks(3, |p| {
            let r = p.rank as f32;
            let (mean, total) = p.weighted_mean(&[r, 1.0 + r], [2.0, 0.0, 1.0][p.rank])?;
            let sum = p.sum(&[p.rank as f64, 1.0])?;
            let all = p.all_gather(&vec![r; p.rank])?;
            p.agree("answer", b"42")?;
            p.barrier()?;
            Ok((mean, total, sum, all))
        });
        for o in out {
            let (mean, total, sum, all) = o.unwrap();
            // (2 * [0, 1] + 1 * [2, 3]) / 3; rank 1's weight is 0.
            assert_eq!(mean, vec![2.0 / 3.0, 5.0 / 3.0]);
            assert_eq!(total, 3.0);
            assert_eq!(sum, vec![3.0, 3.0]);
            assert_eq!(all, vec![vec![], vec![1.0], vec![2.0, 2.0]]);
        }
    }

    #[test]
    fn a_rank_that_disagrees_or_goes_away_fails_the_others() {
        let out = ranks(2, |p| {
            let v = if p.rank == 0 { b"a" } else { b"b" };
            p.agree("weights", v)
        });
        for o in out {
            let e = o.unwrap_err().to_string();
            assert!(e.contains("rank 1's weights differs"), "{e}");
        }
        // Rank 1 ends without a word: rank 0 learns at once.
        let out = ranks(2, |p| match p.rank {
            0 => p.barrier(),
            _ => Ok(()),
        });
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("rank 1 went away"), "{e}");
    }
}
