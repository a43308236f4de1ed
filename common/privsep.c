/*
 * privsep.c - how a child of a root-started iotd gives up root (see
 * privsep.h and the "Privileges" section of docs/arch.md).
 *
 * Owns the unprivileged identity the children take, the empty directory
 * the listener and the workers are shut in, and their seccomp allow-lists.
 * The directory is created and removed at once, kept only as an fd: it
 * leaves nothing behind, and nothing can ever be created in it (the kernel
 * refuses new entries in a removed directory).
 */
#include "privsep.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <seccomp.h>

#include "log.h"

#define FALLBACK_USER "nobody"

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

int privsep_prepare(struct privsep *ps, const char *user)
{
	*ps = (struct privsep){ .root_fd = -1 };
	if (geteuid() != 0)
		return 0;
	if (resolve_user(ps, user) < 0)
		return -1;
	ps->active = true;
	ps->confine = !PRIVSEP_SANITIZED;
	if (ps->confine && make_empty_root(ps) < 0)
		return -1;
	if (ps->uid == 0)
		log_warn("server.user '%s' is root: the children keep root", ps->user);
	log_info("children run as %s (uid %u, gid %u)%s", ps->user, (unsigned)ps->uid,
		 (unsigned)ps->gid,
		 ps->confine ? "; listener and workers chrooted and under seccomp"
			     : "; no chroot or seccomp in this sanitizer build");
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
 * System calls every confined role makes: its loop (epoll, timerfd,
 * eventfd reads and writes), its control socket and fd channel (sendmsg,
 * recvmsg), its log lines (write, writev), malloc (brk, mmap, mremap,
 * madvise) and exit or abort. Conditional ones are added separately.
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
 * only to ourselves (abort).
 */
static int allow_conditional(scmp_filter_ctx ctx)
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
	for (size_t i = 0; rc == 0 && i < ARRAY_SIZE(fcntl_cmds); i++)
		rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1,
				      SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t)fcntl_cmds[i]));
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
	    allow_conditional(ctx) < 0)
		goto cleanup;
	if (role == ROLE_WORKER &&
	    allow_names(ctx, worker_syscalls, ARRAY_SIZE(worker_syscalls)) < 0)
		goto cleanup;
	if (role == ROLE_LISTENER &&
	    allow_names(ctx, listener_syscalls, ARRAY_SIZE(listener_syscalls)) < 0)
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
	bool confine = ps->active && ps->confine &&
		       (role == ROLE_LISTENER || role == ROLE_WORKER);
	int rc = -1;

	if (!ps->active)
		return 0;
	/* Reach the journal while /run is still in sight. */
	if (confine)
		log_journal_pin();
	if (confine && enter_root(ps) < 0)
		goto cleanup;
	if (drop_ids(ps) < 0 || rearm_pdeathsig(parent, role) < 0)
		goto cleanup;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		log_error("cannot set no_new_privs: %s", strerror(errno));
		goto cleanup;
	}
	if (confine && load_filter(role) < 0)
		goto cleanup;
	rc = 0;
cleanup:
	if (ps->root_fd >= 0)
		close(ps->root_fd);
	return rc;
}
