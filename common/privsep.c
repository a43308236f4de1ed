/*
 * privsep.c - what each iotd process gives up, and when (see privsep.h
 * and the "Privileges" section of docs/arch.md).
 *
 * Owns the unprivileged identity the children of a root-started iotd
 * take, the capabilities the supervisor keeps, the empty directory the
 * listener and the workers are shut in, the Landlock rulesets and the
 * seccomp allow-list of every role. The directory is created and removed
 * at once, kept only as an fd: it leaves nothing behind, and nothing can
 * ever be created in it (the kernel refuses new entries in a removed
 * directory).
 */
#include "privsep.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <pwd.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <seccomp.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define PRIVSEP_UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#endif
#endif
#ifndef PRIVSEP_UNDER_VALGRIND
#define PRIVSEP_UNDER_VALGRIND() false
#endif

#include "log.h"

#define FALLBACK_USER "nobody"

/*
 * What privsep_prepare() decided, for privsep_seal_store(), which the
 * router calls without the supervisor's struct; a fork hands it on.
 */
static bool confined;
static int landlock_abi;

/* ---- identity ---------------------------------------------------------- */

static int lookup_user(struct privsep *ps, const char *name)
{
	struct passwd *pw;

	errno = 0;
	pw = getpwnam(name);
	if (pw == NULL)
		return -1;
	ps->uid = pw->pw_uid;
	ps->gid = pw->pw_gid;
	snprintf(ps->user, sizeof(ps->user), "%s", name);
	return 0;
}

static int resolve_user(struct privsep *ps, const char *user)
{
	if (lookup_user(ps, user) == 0)
		return 0;
	if (errno != 0)
		log_warn("cannot look up user '%s': %s; trying '%s'", user, strerror(errno),
			 FALLBACK_USER);
	else
		log_warn("user '%s' does not exist; the children run as '%s'", user,
			 FALLBACK_USER);
	if (lookup_user(ps, FALLBACK_USER) == 0)
		return 0;
	log_error("neither user '%s' nor '%s' exists: refusing to run the children as root "
		  "(set server.user)", user, FALLBACK_USER);
	return -1;
}

/* ---- the empty root ------------------------------------------------------ */

/*
 * A fresh 0700 root-owned directory, opened and removed at once. Tried in
 * a few places, since /run or /tmp may be read-only under a sandbox.
 */
static int make_empty_root(struct privsep *ps)
{
	static const char *const parents[] = { "/run", "/tmp", "/var/tmp" };
	char path[64];
	int saved = 0;

	for (size_t i = 0; i < ARRAY_SIZE(parents); i++) {
		snprintf(path, sizeof(path), "%s/iotd-root.XXXXXX", parents[i]);
		if (mkdtemp(path) == NULL) {
			saved = errno;
			continue;
		}
		ps->root_fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		saved = errno;
		if (rmdir(path) < 0)
			log_warn("cannot remove %s: %s", path, strerror(errno));
		if (ps->root_fd >= 0)
			return 0;
	}
	log_error("cannot create an empty directory to confine the children in: %s",
		  strerror(saved));
	return -1;
}

/* ---- Landlock ------------------------------------------------------------ */

/*
 * Rights and fields of later ABIs than the kernel headers iotd may be
 * built with (Debian 12's know ABI 2); the kernel reports its ABI and
 * only what that ABI knows is asked for.
 */
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)       /* ABI 3 */
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)      /* ABI 5 */
#endif
#define LL_NET_BIND_TCP (1ULL << 0)                    /* ABI 4 */
#define LL_NET_CONNECT_TCP (1ULL << 1)
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)      /* ABI 6 */
#define LL_SCOPE_SIGNAL (1ULL << 1)

/* struct landlock_ruleset_attr as of ABI 6; the size passed says how much the kernel reads. */
struct ll_ruleset_attr {
	uint64_t handled_access_fs;
	uint64_t handled_access_net;
	uint64_t scoped;
};

/* What the router may do beneath its store directory: LMDB's files, and removing them. */
#define LL_STORE_ACCESS (LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_WRITE_FILE | \
			 LANDLOCK_ACCESS_FS_READ_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE | \
			 LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_TRUNCATE)

/* The ABI, 0 when the kernel has no Landlock (not built in, off at boot, or filtered). */
static int landlock_probe(void)
{
	long abi = syscall(SYS_landlock_create_ruleset, NULL, 0,
			   LANDLOCK_CREATE_RULESET_VERSION);

	if (abi > 0)
		return (int)abi;
	log_warn("Landlock is unavailable (%s): the children are confined by seccomp%s alone",
		 strerror(errno), geteuid() == 0 ? " and the chroot" : "");
	return 0;
}

static uint64_t landlock_fs_rights(int abi)
{
	uint64_t fs = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1;   /* ABI 1: bits 0..12 */

	if (abi >= 2)
		fs |= LANDLOCK_ACCESS_FS_REFER;
	if (abi >= 3)
		fs |= LANDLOCK_ACCESS_FS_TRUNCATE;
	if (abi >= 5)
		fs |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
	return fs;
}

/*
 * A ruleset handling every file system right the kernel knows, with no
 * rule yet: on its own it allows no file at all. From ABI 4 on, TCP bind
 * and connect are handled too (no role makes them), from ABI 6 on
 * signals and abstract unix sockets stay inside the domain.
 */
static int landlock_ruleset(void)
{
	struct ll_ruleset_attr attr = { .handled_access_fs = landlock_fs_rights(landlock_abi) };
	size_t size = offsetof(struct ll_ruleset_attr, handled_access_net);
	long fd;

	if (landlock_abi >= 4) {
		attr.handled_access_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP;
		size = offsetof(struct ll_ruleset_attr, scoped);
	}
	if (landlock_abi >= 6) {
		attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
		size = sizeof(attr);
	}
	fd = syscall(SYS_landlock_create_ruleset, &attr, size, 0);
	if (fd < 0)
		log_error("landlock: cannot create a ruleset: %s", strerror(errno));
	return (int)fd;
}

static int landlock_allow(int ruleset, const char *path, uint64_t access)
{
	struct landlock_path_beneath_attr rule = {
		.allowed_access = access & landlock_fs_rights(landlock_abi),
	};
	int rc;

	rule.parent_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rule.parent_fd < 0) {
		log_error("landlock: cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	rc = (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
	if (rc < 0)
		log_error("landlock: cannot allow %s: %s", path, strerror(errno));
	close(rule.parent_fd);
	return rc;
}

/* Needs no_new_privs (set before). Closes the ruleset. */
static int landlock_enforce(int ruleset)
{
	int rc = (int)syscall(SYS_landlock_restrict_self, ruleset, 0);

	if (rc < 0)
		log_error("landlock: cannot enforce the ruleset: %s", strerror(errno));
	close(ruleset);
	return rc;
}

/* The listener and the workers: no file at all. */
static int landlock_no_files(void)
{
	int ruleset;

	if (landlock_abi == 0)
		return 0;
	ruleset = landlock_ruleset();
	return ruleset < 0 ? -1 : landlock_enforce(ruleset);
}

int privsep_seal_store(const char *dir, bool removable)
{
	char parent[PATH_MAX];
	const char *slash = strrchr(dir, '/');
	int ruleset;

	if (!confined || landlock_abi == 0)
		return 0;
	/* rmdir() asks the parent; "/dev/shm/iotd-1" -> "/dev/shm", "x" -> ".". */
	if (slash == NULL)
		snprintf(parent, sizeof(parent), ".");
	else
		snprintf(parent, sizeof(parent), "%.*s", slash == dir ? 1 : (int)(slash - dir), dir);
	ruleset = landlock_ruleset();
	if (ruleset < 0)
		return -1;
	if (landlock_allow(ruleset, dir, LL_STORE_ACCESS) < 0 ||
	    (removable && landlock_allow(ruleset, parent, LANDLOCK_ACCESS_FS_REMOVE_DIR) < 0)) {
		close(ruleset);
		return -1;
	}
	return landlock_enforce(ruleset);
}

/*
 * Landlock allows reading files beneath each directory, not the files
 * themselves: a rule follows an inode, and iotd-passwd and editors
 * replace a file by renaming a new one over it, which a rule on the old
 * inode would then refuse.
 */
int privsep_seal_read(const char *const *dirs, size_t n)
{
	int ruleset;

	if (!confined || landlock_abi == 0)
		return 0;
	ruleset = landlock_ruleset();
	if (ruleset < 0)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (landlock_allow(ruleset, dirs[i], LANDLOCK_ACCESS_FS_READ_FILE) < 0) {
			close(ruleset);
			return -1;
		}
	return landlock_enforce(ruleset);
}

int privsep_seal_read_files(const char *const *files, size_t n, const char *const *dirs,
			    size_t m)
{
	char (*buf)[PATH_MAX] = calloc(n + 1, sizeof(*buf));
	const char **list = calloc(n + m + 1, sizeof(*list));
	size_t k = 0;
	int rc = -1;

	if (buf == NULL || list == NULL) {
		log_error("landlock: out of memory");
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		if (files[i][0] == '\0')
			continue;
		snprintf(buf[k], sizeof(buf[k]), "%s", files[i]);
		list[k] = dirname(buf[k]);
		k++;
	}
	for (size_t i = 0; i < m; i++)
		if (dirs[i][0] != '\0')
			list[k++] = dirs[i];
	rc = privsep_seal_read(list, k);
done:
	free(buf);
	free(list);
	return rc;
}

/* ---- capabilities ---------------------------------------------------------- */

struct caps {
	uint64_t effective, permitted, inheritable;
};

static int caps_get(struct caps *c)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3] = { 0 };

	if (syscall(SYS_capget, &hdr, d) < 0)
		return -1;
	c->effective = d[0].effective | (uint64_t)d[1].effective << 32;
	c->permitted = d[0].permitted | (uint64_t)d[1].permitted << 32;
	c->inheritable = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
	return 0;
}

static int caps_set(const struct caps *c)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3] = {
		{ (uint32_t)c->effective, (uint32_t)c->permitted, (uint32_t)c->inheritable },
		{ (uint32_t)(c->effective >> 32), (uint32_t)(c->permitted >> 32),
		  (uint32_t)(c->inheritable >> 32) },
	};

	return (int)syscall(SYS_capset, &hdr, d);
}

#define CAP_BIT(cap) (UINT64_C(1) << (cap))

/*
 * Keeps only `keep` in the bounding set, which every child inherits and
 * no process can ever raise again. Changing it needs CAP_SETPCAP: a
 * process without it (not started as root) has nothing to give up there
 * that it could use.
 */
static int bounding_limit(uint64_t keep)
{
	struct caps c;

	if (caps_get(&c) < 0) {
		log_error("cannot read the capabilities: %s", strerror(errno));
		return -1;
	}
	if (!(c.effective & CAP_BIT(CAP_SETPCAP)))
		return 0;
	for (int cap = 0; cap < 64; cap++) {
		int held = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);

		if (held < 0)
			break;          /* past the last capability this kernel has */
		if (held && !(keep & CAP_BIT(cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			log_error("cannot drop capability %d from the bounding set: %s", cap,
				  strerror(errno));
			return -1;
		}
	}
	return 0;
}

/*
 * Keeps only `keep` in the permitted and effective sets and clears the
 * inheritable and ambient sets. Sets that hold nothing more are left
 * alone: a unit's system call filter may refuse capset(2) to a process
 * that has nothing to drop anyway.
 */
static int caps_limit(uint64_t keep)
{
	struct caps c;

	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
		log_error("cannot clear the ambient capabilities: %s", strerror(errno));
		return -1;
	}
	if (caps_get(&c) < 0) {
		log_error("cannot read the capabilities: %s", strerror(errno));
		return -1;
	}
	if ((c.permitted & ~keep) == 0 && (c.effective & ~keep) == 0 && c.inheritable == 0)
		return 0;
	c.permitted &= keep;
	c.effective &= keep;
	c.inheritable = 0;
	if (caps_set(&c) < 0) {
		log_error("cannot drop capabilities: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * What the supervisor still does after its set-up, and needs for it:
 * bind the addresses a reload adds (NET_BIND_SERVICE); as root, fork
 * children that empty their bounding set, chroot and take the user
 * (SETPCAP, SYS_CHROOT, SETGID, SETUID), signal them (KILL: they run as
 * another user) and read their /proc/PID/smaps_rollup for memory_limit
 * (SYS_PTRACE: the kernel asks it for a process of another user, which
 * a credential change also made non-dumpable).
 */
static uint64_t supervisor_caps(const struct privsep *ps)
{
	uint64_t keep = CAP_BIT(CAP_NET_BIND_SERVICE);

	if (ps->active)
		keep |= CAP_BIT(CAP_SETPCAP) | CAP_BIT(CAP_SETGID) | CAP_BIT(CAP_SETUID) |
			CAP_BIT(CAP_KILL) | CAP_BIT(CAP_SYS_PTRACE);
	if (ps->active && ps->root_fd >= 0)
		keep |= CAP_BIT(CAP_SYS_CHROOT);
	return keep;
}

int privsep_limit_supervisor(const struct privsep *ps)
{
	uint64_t keep = supervisor_caps(ps);

	return bounding_limit(keep) < 0 || caps_limit(keep) < 0 ? -1 : 0;
}

/*
 * In a child, once it has left root (bounding_limit(0) came before, while
 * CAP_SETPCAP was still there): no capability left in any set (checked).
 */
static int caps_drop_all(void)
{
	struct caps c;

	if (caps_limit(0) < 0)
		return -1;
	if (caps_get(&c) < 0 || c.effective || c.permitted || c.inheritable) {
		log_error("dropping every capability did not take");
		return -1;
	}
	return 0;
}

/* ---- set-up in the supervisor ------------------------------------------------ */

int privsep_prepare(struct privsep *ps, const char *user)
{
	*ps = (struct privsep){ .root_fd = -1 };
	ps->confine = !PRIVSEP_SANITIZED && !PRIVSEP_UNDER_VALGRIND();
	if (geteuid() == 0) {
		if (resolve_user(ps, user) < 0)
			return -1;
		ps->active = true;
		if (ps->confine && make_empty_root(ps) < 0)
			return -1;
		if (ps->uid == 0)
			log_warn("server.user '%s' is root: the children keep uid 0 (without "
				 "capabilities)", ps->user);
		log_info("children run as %s (uid %u, gid %u)", ps->user, (unsigned)ps->uid,
			 (unsigned)ps->gid);
	}
	if (ps->confine)
		ps->landlock_abi = landlock_probe();
	confined = ps->confine;
	landlock_abi = ps->landlock_abi;
	if (!ps->confine)
		log_info("no chroot, Landlock or seccomp for the children: %s",
			 PRIVSEP_SANITIZED ? "a sanitizer build" : "running under valgrind");
	else
		log_info("children confined: seccomp%s%s", landlock_abi ? ", Landlock" : "",
			 ps->root_fd >= 0 ? ", listener and workers chrooted" : "");
	return 0;
}

void privsep_release(struct privsep *ps)
{
	if (ps->root_fd >= 0)
		close(ps->root_fd);
	ps->root_fd = -1;
}

/* ---- in the child ---------------------------------------------------------- */

static int enter_root(const struct privsep *ps)
{
	if (fchdir(ps->root_fd) < 0 || chroot(".") < 0) {
		log_error("cannot chroot to an empty directory: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* setresuid() as root changes all ids at once; check that root cannot come back. */
static int drop_ids(const struct privsep *ps)
{
	uid_t ru, eu, su;
	gid_t rg, eg, sg;

	if (ps->uid == 0)
		return 0;
	if (setgroups(0, NULL) < 0 || setresgid(ps->gid, ps->gid, ps->gid) < 0 ||
	    setresuid(ps->uid, ps->uid, ps->uid) < 0) {
		log_error("cannot switch to user %s: %s", ps->user, strerror(errno));
		return -1;
	}
	if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 ||
	    ru != ps->uid || eu != ps->uid || su != ps->uid ||
	    rg != ps->gid || eg != ps->gid || sg != ps->gid || setuid(0) == 0) {
		log_error("switching to user %s did not take", ps->user);
		return -1;
	}
	return 0;
}

/*
 * System calls every role makes: its loop (epoll, timerfd, eventfd reads
 * and writes), its control socket and fd channel (sendmsg, recvmsg), its
 * log lines (write, writev), malloc (brk, mmap, mremap, madvise) and exit
 * or abort. Conditional ones are added separately.
 */
static const char *const common_syscalls[] = {
	"read", "write", "readv", "writev", "close",
	"recvmsg", "sendmsg", "recvfrom", "sendto",
	"epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	"timerfd_create", "timerfd_settime", "timerfd_gettime",
	"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
	"getpid", "gettid", "getppid",
	"brk", "munmap", "mremap", "madvise",
	"futex", "restart_syscall", "rt_sigreturn", "rt_sigprocmask", "rt_sigaction",
	"getrandom", "sched_yield",
	"exit", "exit_group",
};

/* The workers' client sockets: options and shutdown on fds they already hold. */
static const char *const worker_syscalls[] = {
	"getsockopt", "setsockopt", "getsockname", "getpeername", "shutdown",
};

static const char *const listener_syscalls[] = {
	"accept4", "accept", "setsockopt",
};

/*
 * The router and its LMDB store: opening the store (creating its
 * directory, sweeping what dead daemons left in /dev/shm, reading its
 * daemon's identity from /proc), then reads, writes and flushes on the
 * files it opened (LMDB also asks uname and fstatfs), and removing a
 * memory store at a graceful stop. Landlock keeps those to the store's
 * directory (privsep_seal_store, after this filter: Landlock's calls can
 * only take rights away); alarm bounds an orphaned router's last drain.
 * The ACL's memfd is checked with fstat and fcntl F_GET_SEALS
 * (allow_conditional) and mapped read-only.
 */
/*
 * The auth role: reading its files (at start and on reload: Landlock keeps
 * that to their directories, privsep_seal_read), and the threads that
 * verify passwords (clone only with CLONE_THREAD, allow_conditional;
 * clone3, whose flags seccomp cannot read, fails with ENOSYS so that
 * glibc falls back to clone), and the memfd that carries the ACL to the
 * router (sealed with fcntl F_ADD_SEALS, allow_conditional).
 */
static const char *const auth_syscalls[] = {
	"openat", "newfstatat", "fstat", "statx", "lseek", "memfd_create",
	"eventfd2", "set_robust_list", "rseq", "sched_getaffinity",
	"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
};

/*
 * The key role: reading its files once at start (Landlock keeps that to
 * their directories, privsep_seal_read; getdents64 for tls.ca_path), and
 * nothing else beyond its loop: no thread, no memfd, no socket.
 */
static const char *const keys_syscalls[] = {
	"openat", "newfstatat", "fstat", "statx", "lseek", "getdents64",
	"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
};

static const char *const router_syscalls[] = {
	"openat", "newfstatat", "fstat", "statx", "fstatfs", "uname", "geteuid",
	"access", "faccessat", "faccessat2", "getdents64", "lseek",
	"mkdir", "mkdirat", "unlink", "unlinkat", "rmdir",
	"flock", "pread64", "pwrite64", "fsync", "fdatasync",
	"alarm", "setitimer",
	"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
};

/* Each role's system calls beyond common_syscalls. */
static const struct syscall_list {
	const char *const *names;
	size_t n;
} role_syscalls[ROLE_MAX] = {
	[ROLE_LISTENER] = { listener_syscalls, ARRAY_SIZE(listener_syscalls) },
	[ROLE_ROUTER] = { router_syscalls, ARRAY_SIZE(router_syscalls) },
	[ROLE_WORKER] = { worker_syscalls, ARRAY_SIZE(worker_syscalls) },
	[ROLE_AUTH] = { auth_syscalls, ARRAY_SIZE(auth_syscalls) },
	[ROLE_KEYS] = { keys_syscalls, ARRAY_SIZE(keys_syscalls) },
};

static int allow_names(scmp_filter_ctx ctx, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int nr = seccomp_syscall_resolve_name(names[i]);
		int rc;

		if (nr == __NR_SCMP_ERROR || nr < 0)
			continue;            /* not a system call on this architecture */
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
		if (rc < 0) {
			log_error("seccomp: cannot allow %s: %s", names[i], strerror(-rc));
			return -1;
		}
	}
	return 0;
}

/*
 * Memory may be mapped or re-protected but never executable (what
 * MemoryDenyWriteExecute= gives a unit); fcntl only for flags; signals
 * only to ourselves (abort). The router may also ask whether a process
 * exists (kill with signal 0: the sweep of dead daemons' stores).
 */
static int allow_conditional(scmp_filter_ctx ctx, enum iotd_role role)
{
	static const int fcntl_cmds[] = { F_GETFL, F_SETFL, F_GETFD, F_SETFD };
	int rc;

	rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
			      SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	if (rc == 0)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
				      SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	if (rc == 0)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
				      SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)getpid()));
	if (rc == 0 && role == ROLE_ROUTER)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(kill), 1,
				      SCMP_A1(SCMP_CMP_EQ, 0));
	if (rc == 0 && role == ROLE_AUTH)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
				      SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
	if (rc == 0 && role == ROLE_AUTH)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	for (size_t i = 0; rc == 0 && i < ARRAY_SIZE(fcntl_cmds); i++)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1,
				      SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t)fcntl_cmds[i]));
	/* The ACL's sealed memfd (sealedfd.h): the auth role seals it, the router checks. */
	if (rc == 0 && (role == ROLE_AUTH || role == ROLE_ROUTER))
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1,
				      SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t)(role == ROLE_AUTH ?
									  F_ADD_SEALS :
									  F_GET_SEALS)));
	if (rc < 0)
		log_error("seccomp: cannot add a conditional rule: %s", strerror(-rc));
	return rc < 0 ? -1 : 0;
}

/* Anything else kills the whole process: the supervisor logs signal 31 (SIGSYS). */
static int load_filter(enum iotd_role role)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	int rc = -1, err;

	if (ctx == NULL) {
		log_error("seccomp: cannot create a filter");
		return -1;
	}
	if (allow_names(ctx, common_syscalls, ARRAY_SIZE(common_syscalls)) < 0 ||
	    allow_conditional(ctx, role) < 0 ||
	    allow_names(ctx, role_syscalls[role].names, role_syscalls[role].n) < 0)
		goto cleanup;
	err = seccomp_load(ctx);
	if (err < 0) {
		log_error("seccomp: cannot load the filter: %s", strerror(-err));
		goto cleanup;
	}
	rc = 0;
cleanup:
	seccomp_release(ctx);
	return rc;
}

/*
 * A credential change clears the parent-death signal: arm it again. Not
 * for the router: it outlives the supervisor just long enough to store
 * what the dead workers left in the rings (see child_run()).
 */
static int rearm_pdeathsig(pid_t parent, enum iotd_role role)
{
	if (role != ROLE_ROUTER && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
		log_error("cannot set the parent-death signal: %s", strerror(errno));
		return -1;
	}
	if (getppid() != parent)
		_exit(0);        /* the supervisor died meanwhile */
	return 0;
}

int privsep_enter(const struct privsep *ps, enum iotd_role role, pid_t parent)
{
	bool no_files = ps->confine && (role == ROLE_LISTENER || role == ROLE_WORKER);
	int rc = -1;

	/*
	 * Reach the journal while it is in sight: before the chroot, and
	 * before seccomp refuses the socket sd_journal_sendv() would make.
	 */
	if (ps->confine)
		log_journal_pin();
	if (no_files && ps->root_fd >= 0 && enter_root(ps) < 0)
		goto cleanup;
	if (bounding_limit(0) < 0)
		goto cleanup;
	if (ps->active && (drop_ids(ps) < 0 || rearm_pdeathsig(parent, role) < 0))
		goto cleanup;
	if (caps_drop_all() < 0)
		goto cleanup;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		log_error("cannot set no_new_privs: %s", strerror(errno));
		goto cleanup;
	}
	if (no_files && landlock_no_files() < 0)
		goto cleanup;
	if (ps->confine && load_filter(role) < 0)
		goto cleanup;
	rc = 0;
cleanup:
	if (ps->root_fd >= 0)
		close(ps->root_fd);
	return rc;
}
