//! [`Ipam`]: how callers reach the allocator's owner task. Requests go
//! to the task through a bounded queue; reads (the table, the pool, what
//! `/health` should say) come from the last durable table.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use gatemesh_handlers::Caller;
use gatemesh_proto::pb;
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};

use crate::owner::{self, IpamStats, Job, Op, Owner};
use crate::table::{self, IpRefusal, Refused, Table};
use crate::{IpamConfig, Pool};

/// `ListIPs` page size when the request names none, and the largest.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 5000;

/// The share of the pool in use at which `/health` turns degraded.
pub const NEARLY_EXHAUSTED_PERCENT: u64 = 90;

/// Why the allocator could not start.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The reservations file holds a record that does not parse, or two
    /// that clash; it is never guessed at, since a dropped record could
    /// give one address to two VMs.
    #[error("GATEWAY_IP_RESERVATIONS_FILE: {0}")]
    Load(String),
    /// The pool holds nothing once the node's own addresses are out, or
    /// those cannot be read.
    #[error("GATEWAY_IP_POOL: {0}")]
    Pool(String),
}

/// The allocator, as the gateway methods, `/metrics` and `/health` reach
/// it; cheap to clone.
#[derive(Clone)]
pub struct Ipam {
    jobs: mpsc::Sender<Job>,
    table: Arc<RwLock<Arc<Table>>>,
    pool: Arc<Pool>,
    stats: Arc<IpamStats>,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("pool", &self.pool.to_string())
            .field("reserved", &self.table.read().len())
            .finish()
    }
}

impl Ipam {
    /// Loads the reservations file, writes it back if it does not hold
    /// exactly the table (first start, a hand edit), and starts the owner
    /// task on the current runtime.
    pub fn start(mut config: IpamConfig) -> Result<Self, IpamError> {
        if config.exclude_node_addresses {
            config.pool = without_node_addresses(&config.pool)?;
        }
        let table = owner::load(&config.reservations_file).map_err(IpamError::Load)?;
        let pool = Arc::new(config.pool.clone());
        let outside = table.iter().filter(|r| !pool.contains(r.ip)).count();
        if outside > 0 {
            tracing::warn!(
                outside,
                pool = %pool,
                "reservations outside the pool are kept until released"
            );
        }
        let stats = Arc::new(IpamStats::default());
        let table = Arc::new(RwLock::new(Arc::new(table)));
        let owner = Owner {
            pool: pool.clone(),
            config,
            table: table.clone(),
            stats: stats.clone(),
        };
        // A file that cannot be written now may be writable at the first
        // allocation (a directory made late): the gateway starts anyway,
        // degraded, and every batch writes the whole table.
        if let Err(e) = owner.sync_file() {
            tracing::warn!(error = %e, "cannot write the reservations file at start");
        }
        tracing::info!(
            pool = %pool,
            size = pool.size(),
            reserved = table.read().len(),
            file = %owner.config.reservations_file.display(),
            "IP allocator started"
        );
        let (jobs, rx) = mpsc::channel(owner::QUEUE);
        tokio::spawn(owner.run(rx));
        Ok(Self {
            jobs,
            table,
            pool,
            stats,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn stats(&self) -> &IpamStats {
        &self.stats
    }

    /// The table as last written.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    /// Addresses of the pool reserved.
    pub fn used(&self) -> u64 {
        self.table.read().used(&self.pool)
    }

    pub fn pool_info(&self) -> pb::IpPool {
        pb::IpPool {
            ranges: self.pool.spec().to_vec(),
            size: self.pool.size(),
            used: self.used(),
        }
    }

    /// Why `/health` should be degraded, if it should.
    pub fn problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        let (used, size) = (self.used(), self.pool.size());
        if used * 100 >= size * NEARLY_EXHAUSTED_PERCENT {
            problems.push(format!(
                "pool nearly exhausted: {used} of {size} addresses reserved"
            ));
        }
        if let Some(e) = &*self.stats.write_error.lock() {
            problems.push(format!("last write failed: {e}"));
        }
        if let Some(e) = &*self.stats.reload_error.lock() {
            problems.push(format!("dnsmasq reload failed: {e}"));
        }
        if let Some(e) = &*self.stats.lease_error.lock() {
            problems.push(format!("lease file unreadable: {e}"));
        }
        for e in [&self.stats.file_problem, &self.stats.watch_error] {
            if let Some(e) = &*e.lock() {
                problems.push(e.clone());
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// Counts and logs a refusal, once, where it reaches the caller. An
    /// instance can send bad requests at will: the lines are rate-limited,
    /// the counts are not.
    fn refused(&self, method: &str, caller: &Caller, refused: &Refused) {
        self.stats.count_refusal(refused.reason);
        let reason = refused.reason.as_str();
        match refused.reason {
            IpRefusal::Persist | IpRefusal::Unavailable => gatemesh_runtime::limited!(
                tracing::Level::WARN,
                method, reason, instance = %caller.id(), environment = %caller.environment(),
                error = %refused.message, "IP request failed"
            ),
            _ => gatemesh_runtime::limited!(
                tracing::Level::INFO,
                method, reason, instance = %caller.id(), environment = %caller.environment(),
                error = %refused.message, "IP request refused"
            ),
        }
    }

    async fn submit(&self, op: Op, caller: &Caller) -> Result<table::Done, Refused> {
        let (reply, answer) = oneshot::channel();
        let unavailable =
            || Refused::new(IpRefusal::Unavailable, "the IP allocator is not running");
        self.jobs
            .send(Job {
                op,
                environment: caller.environment().to_string(),
                reply,
            })
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }

    /// `AllocateIP` for `caller`.
    pub async fn allocate(
        &self,
        caller: &Caller,
        request: pb::AllocateIpRequest,
    ) -> Result<pb::AllocateIpResponse, Refused> {
        let result = async {
            let req = table::Allocate::try_from(request)?;
            self.submit(Op::Allocate(req), caller).await
        }
        .await;
        match result {
            Ok(done) => {
                if done.changed {
                    self.stats.allocations.fetch_add(1, Relaxed);
                    tracing::info!(
                        ip = %done.reservation.ip, mac = %done.reservation.mac,
                        vps_id = %done.reservation.vps_id, instance = %caller.id(),
                        environment = %caller.environment(), "IP allocated"
                    );
                }
                Ok(pb::AllocateIpResponse {
                    reservation: Some((&done.reservation).into()),
                    existing: !done.changed,
                    pool: Some(self.pool_info()),
                })
            }
            Err(e) => {
                self.refused("AllocateIP", caller, &e);
                Err(e)
            }
        }
    }

    /// `ReleaseIP` for `caller`.
    pub async fn release(
        &self,
        caller: &Caller,
        request: pb::ReleaseIpRequest,
    ) -> Result<pb::ReleaseIpResponse, Refused> {
        let result = async {
            let req = table::Release::try_from(request)?;
            self.submit(Op::Release(req), caller).await
        }
        .await;
        match result {
            Ok(done) => {
                self.stats.releases.fetch_add(1, Relaxed);
                tracing::info!(
                    ip = %done.reservation.ip, mac = %done.reservation.mac,
                    vps_id = %done.reservation.vps_id, instance = %caller.id(),
                    environment = %caller.environment(), "IP released"
                );
                Ok(pb::ReleaseIpResponse {
                    reservation: Some((&done.reservation).into()),
                    pool: Some(self.pool_info()),
                })
            }
            Err(e) => {
                self.refused("ReleaseIP", caller, &e);
                Err(e)
            }
        }
    }

    /// `ListIPs`: one page of the caller's environment's part of the
    /// durable table, sorted by address.
    pub fn list(
        &self,
        caller: &Caller,
        request: pb::ListIPsRequest,
    ) -> Result<pb::ListIPsResponse, Refused> {
        let page = match request.page_size as usize {
            0 => Ok(DEFAULT_PAGE),
            n if n <= MAX_PAGE => Ok(n),
            n => Err(Refused::new(
                IpRefusal::BadPage,
                format!("page_size {n}: at most {MAX_PAGE}"),
            )),
        };
        let after = match request.page_token.as_str() {
            "" => Ok(None),
            token => token.parse::<Ipv4Addr>().map(Some).map_err(|_| {
                Refused::new(
                    IpRefusal::BadPage,
                    "page_token: not a token from a previous answer",
                )
            }),
        };
        let (page, after) = match page.and_then(|p| after.map(|a| (p, a))) {
            Ok(ok) => ok,
            Err(e) => {
                self.refused("ListIPs", caller, &e);
                return Err(e);
            }
        };
        // A caller sees its environment's reservations only (the admin
        // API with a secret of every environment, its empty environment,
        // sees all): which VMs another environment runs, with their MACs
        // and organizations, is that environment's business.
        let own = &**caller.environment();
        let table = self.table();
        let mut reservations: Vec<pb::IpReservation> = table
            .after(after)
            .filter(|r| own.is_empty() || r.environment == own)
            .take(page + 1)
            .map(Into::into)
            .collect();
        let next_page_token = if reservations.len() > page {
            reservations.truncate(page);
            reservations
                .last()
                .map(|r| r.ip.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListIPsResponse {
            pool: Some(self.pool_info()),
            reservations,
            next_page_token,
        })
    }
}

/// `pool` less the node's own addresses, logged when it held any: an
/// address the node holds is never a VM's.
fn without_node_addresses(pool: &Pool) -> Result<Pool, IpamError> {
    let own = crate::host::node_addresses().map_err(|e| {
        IpamError::Pool(format!(
            "cannot read the node's own addresses to keep them out of the pool: {e}"
        ))
    })?;
    let (less, excluded) = pool.without(&own).map_err(|e| {
        IpamError::Pool(format!(
            "{e} (the node's own addresses are never allocated)"
        ))
    })?;
    if !excluded.is_empty() {
        let excluded: Vec<String> = excluded.iter().map(ToString::to_string).collect();
        tracing::info!(
            excluded = %excluded.join(","),
            "the node's own addresses in the pool are never allocated"
        );
    }
    Ok(less)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A fresh directory, removed on drop.
    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = tempfile::Builder::new()
                .prefix(&format!("gatemesh-ipam-{name}-"))
                .tempdir()
                .unwrap();
            Self(dir)
        }

        fn join(&self, name: &str) -> std::path::PathBuf {
            self.0.path().join(name)
        }
    }

    fn caller(env: &str) -> Caller {
        Caller::new(
            format!("{env}-1"),
            env,
            gatemesh_handlers::Proof::SharedSecret,
        )
    }

    fn alloc(vps: &str, mac: &str) -> pb::AllocateIpRequest {
        pb::AllocateIpRequest {
            vps_id: vps.into(),
            organization_id: "org".into(),
            mac: mac.into(),
            ip: String::new(),
        }
    }

    fn mac(n: usize) -> String {
        format!("52:54:00:00:{:02x}:{:02x}", n >> 8, n & 0xff)
    }

    fn config(dir: &Dir, pool: &str) -> IpamConfig {
        IpamConfig::new(Pool::parse(pool, "").unwrap(), dir.join("reservations"))
    }

    #[tokio::test]
    async fn concurrent_allocations_from_two_environments_never_share_an_address() {
        let dir = Dir::new("concurrent");
        let ipam = Ipam::start(config(&dir, "10.1.0.0/23")).unwrap();
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let ipam = ipam.clone();
                tokio::spawn(async move {
                    let env = if i % 2 == 0 { "beta" } else { "prod" };
                    ipam.allocate(&caller(env), alloc(&format!("vps-{i}"), &mac(i)))
                        .await
                        .unwrap()
                        .reservation
                        .unwrap()
                        .ip
                })
            })
            .collect();
        let mut ips = Vec::new();
        for t in tasks {
            ips.push(t.await.unwrap());
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 500, "every address unique");
        let on_disk = owner::load(&dir.join("reservations")).unwrap();
        assert_eq!(on_disk, *ipam.table(), "the file holds what was answered");
        assert_eq!(ipam.stats().allocations.load(Relaxed), 500);
        assert!(
            ipam.stats().writes.load(Relaxed) <= 501,
            "one write per batch at most"
        );
        assert_eq!(
            ipam.problem().unwrap(),
            "pool nearly exhausted: 500 of 510 addresses reserved"
        );
    }

    #[tokio::test]
    async fn reservations_survive_a_restart_and_a_retry_answers_the_same_address() {
        let dir = Dir::new("restart");
        let first = Ipam::start(config(&dir, "10.1.0.10-10.1.0.20")).unwrap();
        let a = first
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap();
        assert!(!a.existing);
        drop(first);
        // A write cut short leaves a temporary file; it is not state.
        std::fs::write(dir.join(".reservations.999.tmp"), "garbage").unwrap();
        let second = Ipam::start(config(&dir, "10.1.0.10-10.1.0.20")).unwrap();
        assert!(!dir.join(".reservations.999.tmp").exists());
        let again = second
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap();
        assert!(again.existing);
        assert_eq!(again.reservation, a.reservation);
        let list = second
            .list(&caller("prod"), pb::ListIPsRequest::default())
            .unwrap();
        assert_eq!(list.reservations, vec![a.reservation.unwrap()]);
        assert_eq!(list.pool.unwrap().used, 1);
        // Another environment's caller sees the pool, not prod's VMs.
        let list = second
            .list(&caller("beta"), pb::ListIPsRequest::default())
            .unwrap();
        assert!(list.reservations.is_empty());
        assert_eq!(list.pool.unwrap().used, 1);
    }

    #[tokio::test]
    async fn the_nodes_own_addresses_are_never_handed_out() {
        let dir = Dir::new("own");
        let mut two = config(&dir, "127.0.0.1-127.0.0.2");
        two.exclude_node_addresses = true;
        let ipam = Ipam::start(two).unwrap();
        assert_eq!(ipam.pool().size(), 1, "127.0.0.1 is this node's");
        let a = ipam
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap();
        assert_eq!(a.reservation.unwrap().ip, "127.0.0.2");
        let mut one = config(&dir, "127.0.0.1");
        one.exclude_node_addresses = true;
        let e = Ipam::start(one).unwrap_err().to_string();
        assert!(
            e.starts_with("GATEWAY_IP_POOL: the pool holds no address"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_corrupt_record_stops_the_start_instead_of_losing_a_reservation() {
        let dir = Dir::new("corrupt");
        std::fs::write(
            dir.join("reservations"),
            "# gatemesh-ipam v1 ip=10.1.0.10 mac=zz vps=vps-a org=- env=- at=1\n",
        )
        .unwrap();
        let e = Ipam::start(config(&dir, "10.1.0.10-10.1.0.20")).unwrap_err();
        assert!(e.to_string().contains("line 1: bad mac"), "{e}");
    }

    #[tokio::test]
    async fn an_unwritable_file_at_start_degrades_instead_of_stopping() {
        let dir = Dir::new("late");
        let sub = dir.join("made-later");
        let ipam = Ipam::start(IpamConfig::new(
            Pool::parse("10.1.0.10-10.1.0.20", "").unwrap(),
            sub.join("reservations"),
        ))
        .unwrap();
        assert!(
            ipam.problem()
                .unwrap()
                .starts_with("last write failed: cannot write")
        );
        std::fs::create_dir_all(&sub).unwrap();
        ipam.allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap();
        assert_eq!(ipam.problem(), None);
        assert_eq!(
            owner::load(&sub.join("reservations")).unwrap(),
            *ipam.table()
        );
    }

    #[tokio::test]
    async fn a_failed_write_refuses_the_batch_and_changes_nothing() {
        let dir = Dir::new("unwritable");
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let ipam = Ipam::start(IpamConfig::new(
            Pool::parse("10.1.0.10-10.1.0.20", "").unwrap(),
            sub.join("reservations"),
        ))
        .unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        let e = ipam
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap_err();
        assert_eq!(e.reason, IpRefusal::Persist);
        assert_eq!(e.reason.code(), tonic::Code::Unavailable);
        assert!(ipam.table().is_empty());
        assert!(ipam.problem().unwrap().contains("last write failed"));
        assert_eq!(ipam.stats().refused(IpRefusal::Persist), 1);
        std::fs::create_dir_all(&sub).unwrap();
        let ok = ipam
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap();
        assert_eq!(ok.reservation.unwrap().ip, "10.1.0.10");
        assert_eq!(ipam.problem(), None);
    }

    /// A lease file whose lease for 10.1.0.10 (another MAC's) comes a
    /// moment after `head`, as dnsmasq rewrites it in place: truncated,
    /// then written line by line.
    async fn allocate_while_the_lease_file_is_rewritten(
        name: &str,
        head: &str,
        rest_after: Duration,
    ) -> pb::AllocateIpResponse {
        let dir = Dir::new(name);
        let leases = dir.join("dnsmasq.leases");
        let later = gatemesh_dnsmasq::unix_now() + 3600;
        let full = format!(
            "{later} 52:54:00:99:99:01 10.1.0.9 other *\n\
             {later} 52:54:00:99:99:02 10.1.0.10 other *\n"
        );
        std::fs::write(&leases, head.replace("LATER", &later.to_string())).unwrap();
        let mut config = config(&dir, "10.1.0.10-10.1.0.11");
        config.leases_file = Some(leases.clone());
        let ipam = Ipam::start(config).unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(rest_after).await;
            std::fs::write(&leases, full).unwrap();
        });
        let answer = ipam
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap();
        writer.await.unwrap();
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_file_read_in_the_middle_of_a_rewrite_is_read_again_a_moment_later() {
        // Two reads back to back agree on the first line alone.
        let a = allocate_while_the_lease_file_is_rewritten(
            "between-lines",
            "LATER 52:54:00:99:99:01 10.1.0.9 other *\n",
            crate::settings::LEASE_SETTLE.pause / 2,
        )
        .await;
        assert_eq!(a.reservation.unwrap().ip, "10.1.0.11", "10 is leased");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_file_cut_in_the_middle_of_a_line_is_not_used() {
        // However long the cut stays, a line without its newline is being
        // written: what follows it is not there yet.
        let a = allocate_while_the_lease_file_is_rewritten(
            "mid-line",
            "LATER 52:54:00:99:99:01 10.1.0.9 other 01:52",
            crate::settings::LEASE_SETTLE.pause * 3 / 2,
        )
        .await;
        assert_eq!(a.reservation.unwrap().ip, "10.1.0.11", "10 is leased");
    }

    #[tokio::test]
    async fn an_unreadable_lease_file_refuses_allocations_instead_of_ignoring_leases() {
        let dir = Dir::new("unreadable-leases");
        let leases = dir.join("dnsmasq.leases");
        // Reading a directory fails (EISDIR), as an unreadable file would.
        std::fs::create_dir(&leases).unwrap();
        let mut config = config(&dir, "10.1.0.10-10.1.0.11");
        config.leases_file = Some(leases);
        let ipam = Ipam::start(config).unwrap();
        let e = ipam
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap_err();
        assert_eq!(e.reason, IpRefusal::Unavailable, "{e}");
        assert!(e.message.contains("lease file"), "{e}");
        assert!(ipam.table().is_empty());
        assert!(
            ipam.problem()
                .unwrap()
                .starts_with("lease file unreadable: cannot read the lease file"),
            "/health says why"
        );
    }

    #[tokio::test]
    async fn leases_of_other_macs_are_skipped_and_a_full_pool_is_resource_exhausted() {
        let dir = Dir::new("leases");
        let leases = dir.join("dnsmasq.leases");
        std::fs::write(
            &leases,
            format!(
                "{} 52:54:00:99:99:99 10.1.0.10 other *\n",
                gatemesh_dnsmasq::unix_now() + 3600
            ),
        )
        .unwrap();
        let mut config = config(&dir, "10.1.0.10-10.1.0.11");
        config.leases_file = Some(leases);
        let ipam = Ipam::start(config).unwrap();
        let a = ipam
            .allocate(&caller("prod"), alloc("vps-a", &mac(1)))
            .await
            .unwrap();
        assert_eq!(a.reservation.unwrap().ip, "10.1.0.11");
        assert_eq!(ipam.problem(), None, "1 of 2 reserved");
        let e = ipam
            .allocate(&caller("prod"), alloc("vps-b", &mac(2)))
            .await
            .unwrap_err();
        assert_eq!(e.reason, IpRefusal::Exhausted);
        assert_eq!(ipam.stats().refused(IpRefusal::Exhausted), 1);
        let e = ipam
            .release(
                &caller("beta"),
                pb::ReleaseIpRequest {
                    vps_id: "vps-a".into(),
                    mac: String::new(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason, IpRefusal::Environment);
    }
}
