/*
 * test_auth.c - the auth role (daemon/auth*.c) run in a child, with this
 * test as its supervisor and as a worker at the other end of the auth
 * channel: the greeting, verdicts of a password file (accepted with the
 * user's name, bad password, anonymous), what a compromised worker may
 * send (a malformed request is dropped, the role carries on), the bound
 * on one worker's requests (CONNACK 3 at once), one answer for a request
 * sent twice, the slow-down of an address that failed, a reload; a
 * JWT's verdict: the user from its claim, its filter lists in the rules;
 * and, with this test as the router too, the ACL file: sent as a sealed
 * memfd at start, when asked and after a reload that changed it, its
 * patterns to the worker at once, the worker told which generation the
 * router took, each verdict carrying the client's topic rules alone,
 * which make its view with the patterns.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include "acl.h"
#include "config.h"
#include "files.h"
#include "ipc.h"
#include "log.h"
#include "mqtt.h"
#include "passwd.h"
#include "roles.h"
#include "sealedfd.h"
#include "tokens.h"

struct fx {
	struct iotd_config cfg;
	struct role_env env;
	char dir[64], path[96];
	char acl_path[96];               /* an ACL file, when the fixture has one */
	int ctl, chan;                   /* the supervisor's end, the worker's end */
	int router;                      /* the router's end */
	pid_t pid;
	struct acl_views *views;         /* the worker's: the patterns it was sent */
};

/* A user line for the file: Argon2id at its cheapest. */
static void user_line(char *out, size_t len, const char *user, const char *password)
{
	static const struct passwd_argon2_params cheap = { .t_cost = 1, .m_kib = 8, .lanes = 1 };
	int n = snprintf(out, len, "%s:", user);

	assert_int_equal(passwd_hash_argon2id(password, strlen(password), &cheap, out + n,
					      len - (size_t)n), 0);
	strcat(out, "\n");
}

static void write_users(struct fx *f, const char *alice_pw)
{
	char a[256], b[256], text[600];

	user_line(a, sizeof(a), "alice", alice_pw);
	user_line(b, sizeof(b), "bob", "bob-pw");
	snprintf(text, sizeof(text), "%s%s", a, b);
	write_file(f->path, text);
}

/* One message from fd within a second; its type, payload in buf, the fd it carried in *rfd. */
static uint32_t recv_fd(int fd, void *buf, size_t cap, size_t *len, int *rfd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	struct ipc_hdr hdr;
	ssize_t n;

	if (poll(&pfd, 1, 1000) != 1)
		return 0;
	n = ipc_recv(fd, &hdr, buf, cap, rfd);
	assert_true(n >= 0);
	*len = (size_t)n;
	return hdr.type;
}

static uint32_t recv_one(int fd, void *buf, size_t cap, size_t *len)
{
	int rfd;
	uint32_t type = recv_fd(fd, buf, cap, len, &rfd);

	if (type != 0 && rfd >= 0)
		close(rfd);
	return type;
}

static bool nothing_within(int fd, int ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, ms) == 0;
}

static EVP_PKEY *jwt_key;           /* Ed25519: the "jwt" fixture's */

/* A fixture in a directory of its own: the backend's file at f->path. */
static struct fx *fx_new(const char *backend, const char *file)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/tmp/iotd-test-auth-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, file);
	config_defaults(&f->cfg);
	snprintf(f->cfg.auth_backend, sizeof(f->cfg.auth_backend), "%s", backend);
	f->cfg.auth_hash_threads = 1;
	f->cfg.auth_max_pending = 2;
	f->cfg.auth_max_failure_delay_ms = 400;
	f->views = acl_views_new();
	assert_non_null(f->views);
	return f;
}

/* Fork the auth role on f's configuration; its READY and its greeting come first. */
static int fx_start(struct fx *f, void **state)
{
	static uint8_t buf[IPC_MAX_PAYLOAD];
	size_t len;
	int sp[2];

	f->env.cfg = &f->cfg;
	f->env.nworkers = 1;
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp),
			 0);
	f->env.auth_chan[0] = sp[0];
	f->chan = sp[1];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp),
			 0);
	f->env.auth_router = sp[0];
	f->router = sp[1];
	f->pid = fork_role(&f->env, &f->ctl);
	if (f->pid == 0) {
		close(f->chan);
		close(f->router);
		_exit(auth_main(&f->env));
	}
	close(f->env.auth_chan[0]);
	close(f->env.auth_router);
	assert_int_equal(recv_one(f->ctl, buf, sizeof(buf), &len), IPC_READY);
	assert_int_equal(recv_one(f->chan, buf, sizeof(buf), &len), IPC_AUTH_HELLO);
	*state = f;
	return 0;
}

/* The ACL the router is sent: none (the fixture has no ACL file). */
static void no_acl_sent(struct fx *f)
{
	struct ipc_auth_acl msg;
	size_t len;
	int fd;

	assert_int_equal(recv_fd(f->router, &msg, sizeof(msg), &len, &fd), IPC_AUTH_ACL);
	assert_true(len == sizeof(msg) && msg.len == 0 && fd < 0);
}

static int setup(void **state)
{
	struct fx *f = fx_new("file", "passwd");

	write_users(f, "alice-pw");
	snprintf(f->cfg.auth_password_file, sizeof(f->cfg.auth_password_file), "%s", f->path);
	fx_start(f, state);
	no_acl_sent(f);
	return 0;
}

/* More requests at once, anonymous clients allowed, one waiting behind a failing address. */
static int setup_wide(void **state)
{
	struct fx *f = fx_new("file", "passwd");

	write_users(f, "alice-pw");
	snprintf(f->cfg.auth_password_file, sizeof(f->cfg.auth_password_file), "%s", f->path);
	f->cfg.auth_max_pending = 8;
	f->cfg.auth_max_waiting_per_address = 1;
	f->cfg.auth_allow_anonymous = true;
	fx_start(f, state);
	no_acl_sent(f);
	return 0;
}

static const char acl_text[] = "user alice\ntopic read a/#\ntopic deny a/secret\n"
			       "pattern write c/%c/#\n";

static int setup_acl(void **state)
{
	struct fx *f = fx_new("file", "passwd");

	write_users(f, "alice-pw");
	snprintf(f->cfg.auth_password_file, sizeof(f->cfg.auth_password_file), "%s", f->path);
	snprintf(f->acl_path, sizeof(f->acl_path), "%s/acl", f->dir);
	write_file(f->acl_path, acl_text);
	snprintf(f->cfg.auth_acl_file, sizeof(f->cfg.auth_acl_file), "%s", f->acl_path);
	return fx_start(f, state);
}

static int setup_jwt(void **state)
{
	struct fx *f = fx_new("jwt", "keys.pem");
	char *pem;

	jwt_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	assert_non_null(jwt_key);
	pem = public_pem(jwt_key);
	write_file(f->path, pem);
	free(pem);
	snprintf(f->cfg.auth_jwt_key_file, sizeof(f->cfg.auth_jwt_key_file), "%s", f->path);
	snprintf(f->cfg.auth_jwt_read_claim, sizeof(f->cfg.auth_jwt_read_claim), "r");
	snprintf(f->cfg.auth_jwt_write_claim, sizeof(f->cfg.auth_jwt_write_claim), "w");
	fx_start(f, state);
	no_acl_sent(f);
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	int status;

	ipc_send(f->ctl, IPC_SHUTDOWN, 0, NULL, 0, -1);
	assert_int_equal(waitpid(f->pid, &status, 0), f->pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(f->ctl);
	close(f->chan);
	close(f->router);
	unlink(f->path);
	if (f->acl_path[0])
		unlink(f->acl_path);
	rmdir(f->dir);
	acl_views_free(f->views);
	free(f);
	return 0;
}

static void ask_as(struct fx *f, uint64_t conn, uint32_t ticket, const char *remote,
		   const char *user, const char *password, bool from_cert)
{
	struct ipc_auth_fields q = {
		.user_from_cert = from_cert,
		.conn = conn, .ticket = ticket, .remote = remote, .remote_len = strlen(remote),
		.client_id = "c", .client_id_len = 1,
		.has_user = user != NULL, .user = user, .user_len = user ? strlen(user) : 0,
		.has_password = password != NULL, .password = (const uint8_t *)password,
		.password_len = password ? strlen(password) : 0,
	};
	size_t len;
	void *p = ipc_auth_request_encode(&q, &len);

	assert_non_null(p);
	assert_int_equal(ipc_send(f->chan, IPC_AUTH_REQUEST, 0, p, len, -1), 0);
	free(p);
}

static void ask(struct fx *f, uint64_t conn, uint32_t ticket, const char *remote,
		const char *user, const char *password)
{
	ask_as(f, conn, ticket, remote, user, password, false);
}

/* The next verdict: its connection, ticket and code; the user name in user. */
static struct ipc_auth_fields verdict(struct fx *f, char *user, size_t cap)
{
	static uint8_t buf[IPC_MAX_PAYLOAD];
	struct ipc_auth_fields v;
	size_t len;

	assert_int_equal(recv_one(f->chan, buf, sizeof(buf), &len), IPC_AUTH_VERDICT);
	assert_true(ipc_auth_verdict_decode(buf, len, &v));
	snprintf(user, cap, "%.*s", (int)v.user_len, v.user);
	return v;
}

/* The next verdict is conn's, with code. */
static void expect_verdict(struct fx *f, uint64_t conn, uint8_t code)
{
	char user[64];
	struct ipc_auth_fields v = verdict(f, user, sizeof(user));

	assert_int_equal(v.conn, conn);
	assert_int_equal(v.code, code);
}

/* A SCRAM first step for conn: client-first of user. */
static void ask_scram_first(struct fx *f, uint64_t conn, uint32_t ticket, const char *user)
{
	char first[128];
	int n = snprintf(first, sizeof(first), "n,,n=%s,r=clientnonce%llu", user,
			 (unsigned long long)conn);
	struct ipc_auth_fields q = {
		.conn = conn, .ticket = ticket, .remote = "10.0.0.1", .remote_len = 8,
		.client_id = "c", .client_id_len = 1,
		.scram_step = IPC_AUTH_SCRAM_FIRST, .data = (const uint8_t *)first,
		.data_len = (size_t)n,
	};
	size_t len;
	void *p = ipc_auth_request_encode(&q, &len);

	assert_non_null(p);
	assert_int_equal(ipc_send(f->chan, IPC_AUTH_REQUEST, 0, p, len, -1), 0);
	free(p);
}

static void cancel(struct fx *f, uint64_t conn, uint32_t ticket)
{
	struct ipc_auth_cancel c = { .conn = conn, .ticket = ticket };

	assert_int_equal(ipc_send(f->chan, IPC_AUTH_CANCEL, 0, &c, sizeof(c), -1), 0);
}

static void fail_once(struct fx *f, uint64_t conn, const char *remote)
{
	char user[64];

	ask(f, conn, 0, remote, "alice", "wrong");
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_BAD_AUTH);
}

static void a_password_file_decides(void **state)
{
	struct fx *f = *state;
	struct ipc_auth_fields v;
	char user[64];

	ask(f, 1, 0, "127.0.0.1:1", "alice", "alice-pw");
	v = verdict(f, user, sizeof(user));
	assert_true(v.conn == 1 && v.ticket == 0 && v.code == MQTT_CONNACK_ACCEPTED);
	assert_string_equal(user, "alice");
	ask(f, 2, 1, "127.0.0.2:1", "alice", "wrong");
	v = verdict(f, user, sizeof(user));
	assert_true(v.conn == 2 && v.ticket == 1 && v.code == MQTT_CONNACK_BAD_AUTH);
	ask(f, 3, 0, "127.0.0.3:1", "nobody", "x");
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_BAD_AUTH);
	ask(f, 4, 0, "127.0.0.3:1", NULL, NULL);
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_NOT_AUTHORIZED);
	ask(f, 5, 0, "127.0.0.3:1", "bob", NULL);
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_BAD_AUTH);
}

/* A certificate's identity is taken without a password only with tls.use_identity_as_username. */
static void a_certificate_identity_needs_its_setting(void **state)
{
	struct fx *f = *state;
	struct ipc_auth_fields v;
	char user[64];

	ask_as(f, 1, 0, "127.0.0.1:1", "sensor-1", NULL, true);
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_NOT_AUTHORIZED);
	f->cfg.tls_use_identity_as_username = true;
	assert_int_equal(ipc_send(f->ctl, IPC_CONFIG, 0, &f->cfg, sizeof(f->cfg), -1), 0);
	ask_as(f, 2, 0, "127.0.0.1:1", "sensor-1", NULL, true);
	v = verdict(f, user, sizeof(user));
	assert_true(v.conn == 2 && v.code == MQTT_CONNACK_ACCEPTED);
	assert_string_equal(user, "sensor-1");
	/* Not a user of the password file, and still a password is asked of others. */
	ask(f, 3, 0, "127.0.0.1:1", "sensor-1", NULL);
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_BAD_AUTH);
}

static void a_malformed_request_is_dropped(void **state)
{
	struct fx *f = *state;
	struct ipc_auth_request h = { .conn = 9, .user_len = 1000, .has_user = 1 };
	char user[64];

	assert_int_equal(ipc_send(f->chan, IPC_AUTH_REQUEST, 0, &h, sizeof(h), -1), 0);
	assert_int_equal(ipc_send(f->chan, IPC_AUTH_VERDICT, 0, &h, sizeof(h), -1), 0);
	assert_int_equal(ipc_send(f->chan, IPC_AUTH_REQUEST, 5, &h, sizeof(h), -1), 0);
	/* Well formed, but about a connection of worker 1, on worker 0's channel. */
	ask(f, (1ull << 56) | 11, 0, "127.0.0.1:1", "bob", "bob-pw");
	assert_true(nothing_within(f->chan, 200));
	ask(f, 10, 0, "127.0.0.1:1", "bob", "bob-pw");
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_ACCEPTED);
	assert_string_equal(user, "bob");
}

static void failures_slow_down_and_bound_the_requests_held(void **state)
{
	struct fx *f = *state;
	uint64_t t0;

	fail_once(f, 20, "192.0.2.1:1");
	fail_once(f, 21, "192.0.2.1:1");
	fail_once(f, 26, "192.0.2.1:1");
	/*
	 * Two held for 400 ms (the most this fixture allows, long enough for
	 * the third to be read while they are held however slow the test
	 * runs), the same one again (one answer), a third past max_pending.
	 */
	t0 = clock_ms();
	ask(f, 22, 0, "192.0.2.1:1", "alice", "alice-pw");
	ask(f, 22, 0, "192.0.2.1:1", "alice", "alice-pw");
	ask(f, 23, 1, "192.0.2.1:1", "alice", "alice-pw");
	ask(f, 24, 2, "127.0.0.1:1", "alice", "alice-pw");
	expect_verdict(f, 24, MQTT_CONNACK_UNAVAILABLE);
	expect_verdict(f, 22, MQTT_CONNACK_ACCEPTED);
	assert_true(clock_ms() - t0 >= 400);
	expect_verdict(f, 23, MQTT_CONNACK_ACCEPTED);
	assert_true(nothing_within(f->chan, 200));
	/* The success forgot the address: no wait any more (it would be 400 ms). */
	t0 = clock_ms();
	ask(f, 25, 0, "192.0.2.1:1", "alice", "alice-pw");
	expect_verdict(f, 25, MQTT_CONNACK_ACCEPTED);
	assert_true(clock_ms() - t0 < 400);
}

/*
 * A cancelled request gets no verdict and stops counting against
 * max_pending at once, whether it waits behind its address or is held for
 * its delay; a cancel with another ticket, or about another worker's
 * connection, is ignored.
 */
static void a_cancel_drops_the_request_at_once(void **state)
{
	struct fx *f = *state;

	fail_once(f, 60, "192.0.2.9:1");
	fail_once(f, 61, "192.0.2.9:1");           /* its next verdicts wait 200 ms, then 400 */
	ask(f, 62, 0, "192.0.2.9:1", "alice", "wrong");
	ask(f, 63, 1, "192.0.2.9:1", "alice", "wrong");
	cancel(f, 62, 0);
	cancel(f, 63, 1);
	/* max_pending is 2: both places are free again. */
	ask(f, 64, 0, "192.0.2.10:1", "alice", "alice-pw");
	ask(f, 65, 1, "192.0.2.11:1", "alice", "alice-pw");
	expect_verdict(f, 64, MQTT_CONNACK_ACCEPTED);
	expect_verdict(f, 65, MQTT_CONNACK_ACCEPTED);
	assert_true(nothing_within(f->chan, 500));   /* nothing for 62 or 63 */
	/* Held for its delay: cancels with the wrong ticket, or for worker 1, change nothing. */
	ask(f, 66, 0, "192.0.2.9:1", "alice", "wrong");
	cancel(f, 66, 1);
	cancel(f, (1ull << 56) | 66, 0);
	expect_verdict(f, 66, MQTT_CONNACK_BAD_AUTH);
}

/*
 * An address that failed has one request in flight: the next waits until
 * the first is answered and then for its own delay, one more is refused
 * at once (max_waiting_per_address 1), another address is not delayed;
 * an anonymous client accepted does not forget the failures.
 */
static void a_failing_address_goes_one_at_a_time(void **state)
{
	struct fx *f = *state;
	uint64_t t0;

	fail_once(f, 70, "192.0.2.20:1");          /* 100 ms, then 200, then 400 */
	t0 = clock_ms();
	ask(f, 71, 0, "192.0.2.20:1", "alice", "wrong");
	ask(f, 72, 1, "192.0.2.20:1", "alice", "wrong");
	ask(f, 73, 2, "192.0.2.20:1", "alice", "wrong");
	ask(f, 74, 3, "192.0.2.21:1", "alice", "alice-pw");
	expect_verdict(f, 73, MQTT_CONNACK_UNAVAILABLE);
	expect_verdict(f, 74, MQTT_CONNACK_ACCEPTED);
	assert_true(clock_ms() - t0 < 100);
	expect_verdict(f, 71, MQTT_CONNACK_BAD_AUTH);
	assert_true(clock_ms() - t0 >= 100);
	expect_verdict(f, 72, MQTT_CONNACK_BAD_AUTH);
	assert_true(clock_ms() - t0 >= 100 + 200);
	/* Anonymous, accepted: the address still waits (400 ms) for its next answers. */
	t0 = clock_ms();
	ask(f, 75, 0, "192.0.2.20:1", NULL, NULL);
	expect_verdict(f, 75, MQTT_CONNACK_ACCEPTED);
	assert_true(clock_ms() - t0 >= 400);
	t0 = clock_ms();
	ask(f, 76, 0, "192.0.2.20:1", "alice", "alice-pw");
	expect_verdict(f, 76, MQTT_CONNACK_ACCEPTED);
	assert_true(clock_ms() - t0 >= 400);
	/* A password that verified forgets them. */
	t0 = clock_ms();
	ask(f, 77, 0, "192.0.2.20:1", "alice", "wrong");
	expect_verdict(f, 77, MQTT_CONNACK_BAD_AUTH);
	assert_true(clock_ms() - t0 < 100);
}

static void a_reload_is_a_transaction(void **state)
{
	struct fx *f = *state;
	char user[64];

	write_users(f, "new-pw");
	assert_int_equal(ipc_send(f->ctl, IPC_AUTH_RELOAD, 0, NULL, 0, -1), 0);
	ask(f, 30, 0, "127.0.0.1:1", "alice", "new-pw");
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_ACCEPTED);
	write_file(f->path, "alice:not a hash\n");
	assert_int_equal(ipc_send(f->ctl, IPC_AUTH_RELOAD, 0, NULL, 0, -1), 0);
	ask(f, 31, 0, "127.0.0.1:1", "alice", "new-pw");
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_ACCEPTED);
}

/* The grant the router is sent before a verdict: its fields point into a static buffer. */
static struct ipc_auth_fields grant_sent(struct fx *f)
{
	static uint8_t buf[IPC_MAX_PAYLOAD];
	struct ipc_auth_fields g;
	size_t len;

	assert_int_equal(recv_one(f->router, buf, sizeof(buf), &len), IPC_AUTH_GRANT);
	assert_true(ipc_auth_verdict_decode(buf, len, &g));
	return g;
}

/* The view a verdict's rules make on the worker (client id "c", as ask() sends). */
static struct acl_client *view_of(struct fx *f, const struct ipc_auth_fields *v)
{
	char err[160];
	struct acl_client *c = v->rules_from_token ?
			       acl_client_decode(v->rules, v->rules_len, err, sizeof(err)) :
			       acl_views_client(f->views, v->rules, v->rules_len, v->user,
						v->user_len, "c", 1, err, sizeof(err));

	assert_non_null(c);
	return c;
}

static void a_token_names_its_client_and_carries_its_lists(void **state)
{
	static const char header[] = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}";
	struct fx *f = *state;
	struct ipc_auth_fields v, g;
	struct acl_client *view;
	char claims[256], user[64];

	snprintf(claims, sizeof(claims), "{\"sub\":\"dev-1\",\"exp\":%lld,"
		 "\"r\":[\"a/#\",\"b\"],\"w\":[\"a/b\"]}", (long long)time(NULL) + 600);
	ask(f, 40, 0, "127.0.0.1:1", "ignored", token_with(jwt_key, header, claims));
	v = verdict(f, user, sizeof(user));
	assert_int_equal(v.code, MQTT_CONNACK_ACCEPTED);
	assert_string_equal(user, "dev-1");
	assert_true(v.rules_from_token);
	view = view_of(f, &v);
	assert_true(acl_client_check(view, "a/x", 3, ACL_READ));
	assert_true(acl_client_check(view, "b", 1, ACL_READ));
	assert_false(acl_client_check(view, "a/x", 3, ACL_WRITE));
	assert_true(acl_client_check(view, "a/b", 3, ACL_WRITE));
	assert_false(acl_client_check(view, "c", 1, ACL_READ));
	acl_client_free(view);
	/* Its grant to the router carries the same rules, as a token's. */
	g = grant_sent(f);
	assert_true(g.conn == 40 && g.rules_from_token && g.rules_len == v.rules_len);
	/* No lists: no rules. */
	snprintf(claims, sizeof(claims), "{\"sub\":\"dev-2\",\"exp\":%lld}",
		 (long long)time(NULL) + 600);
	ask(f, 41, 0, "127.0.0.1:1", "ignored", token_with(jwt_key, header, claims));
	v = verdict(f, user, sizeof(user));
	assert_true(v.code == MQTT_CONNACK_ACCEPTED && v.rules_len == 0);
	snprintf(claims, sizeof(claims), "{\"sub\":\"dev-3\",\"exp\":%lld}",
		 (long long)time(NULL) - 1);
	ask(f, 42, 0, "127.0.0.1:1", "ignored", token_with(jwt_key, header, claims));
	assert_int_equal(verdict(f, user, sizeof(user)).code, MQTT_CONNACK_BAD_AUTH);
	EVP_PKEY_free(jwt_key);
}

/* The ACL the router is sent: its generation; the ACL decoded from the sealed memfd in *acl. */
static uint64_t acl_sent(struct fx *f, struct acl **acl)
{
	static const struct acl_limits lim = ACL_LIMITS_DEFAULT;
	struct ipc_auth_acl msg;
	const void *bytes;
	char err[160];
	size_t len;
	int fd;

	assert_int_equal(recv_fd(f->router, &msg, sizeof(msg), &len, &fd), IPC_AUTH_ACL);
	assert_true(len == sizeof(msg) && msg.len > 0 && fd >= 0);
	/* Sealed: nobody may write it any more. */
	assert_int_equal(write(fd, "x", 1), -1);
	bytes = sealedfd_map(fd, msg.len, lim.max_bytes, err, sizeof(err));
	assert_non_null(bytes);
	close(fd);
	assert_int_equal(acl_decode(bytes, msg.len, &lim, acl, err, sizeof(err)), 0);
	sealedfd_unmap(bytes, msg.len);
	return msg.generation;
}

static void taken(struct fx *f, uint64_t generation)
{
	assert_int_equal(ipc_send(f->router, IPC_AUTH_ACL_TAKEN, 0, &generation,
				  sizeof(generation), -1), 0);
}

/*
 * A changed ACL: the router is sent one that lets alice read `readable`
 * and not `not_readable`; the workers get its patterns at once and hear
 * that older views are stale only once the router took it. Returns the
 * generation they are told.
 */
static uint64_t acl_change_sent(struct fx *f, const char *readable, const char *not_readable)
{
	static uint8_t buf[IPC_MAX_PAYLOAD];
	struct acl *acl;
	uint64_t gen = acl_sent(f, &acl), stale;
	char err[160];
	size_t len;

	assert_true(acl_check(acl, "alice", "c1", readable, ACL_READ));
	assert_false(acl_check(acl, "alice", "c1", not_readable, ACL_READ));
	acl_free(acl);
	assert_int_equal(recv_one(f->chan, buf, sizeof(buf), &len), IPC_AUTH_PATTERNS);
	assert_int_equal(acl_views_set_patterns(f->views, buf, len, err, sizeof(err)), 0);
	assert_true(nothing_within(f->chan, 100));
	taken(f, gen);
	assert_int_equal(recv_one(f->chan, buf, sizeof(buf), &len), IPC_AUTH_RULES_STALE);
	assert_int_equal(len, sizeof(stale));
	memcpy(&stale, buf, sizeof(stale));
	return stale;
}

static void an_acl_file_goes_to_the_router_and_into_each_verdict(void **state)
{
	struct fx *f = *state;
	struct ipc_auth_fields v, g;
	struct acl_client *view;
	struct acl *acl;
	uint64_t gen;
	char user[64];

	/* At start: the ACL, its patterns, and once the router took it, stale views. */
	assert_int_equal(acl_change_sent(f, "a/x", "a/secret"), 1);
	/*
	 * A verdict: alice's topic rules, not the patterns; her view, the
	 * patterns substituted with her client id "c".
	 */
	ask(f, 50, 0, "127.0.0.1:1", "alice", "alice-pw");
	v = verdict(f, user, sizeof(user));
	assert_true(v.code == MQTT_CONNACK_ACCEPTED && !v.rules_from_token);
	assert_null(memmem(v.rules, v.rules_len, "c/", 2));
	/* The router heard of it first, under the same name. */
	g = grant_sent(f);
	assert_true(g.conn == 50 && g.user_len == 5 && memcmp(g.user, "alice", 5) == 0);
	view = view_of(f, &v);
	assert_int_equal(acl_client_generation(view), 1);
	assert_true(acl_client_check(view, "a/x", 3, ACL_READ));
	assert_false(acl_client_check(view, "a/secret", 8, ACL_READ));
	assert_true(acl_client_check(view, "c/c/x", 5, ACL_WRITE));
	assert_false(acl_client_check(view, "c/d/x", 5, ACL_WRITE));
	acl_client_free(view);
	/* bob has no section: the patterns alone. */
	ask(f, 52, 0, "127.0.0.1:1", "bob", "bob-pw");
	v = verdict(f, user, sizeof(user));
	assert_int_equal(grant_sent(f).conn, 52);
	view = view_of(f, &v);
	assert_false(acl_client_check(view, "a/x", 3, ACL_READ));
	assert_true(acl_client_check(view, "c/c/x", 5, ACL_WRITE));
	acl_client_free(view);
	/* A router that starts asks: the same ACL again, no stale views. */
	assert_int_equal(ipc_send(f->router, IPC_AUTH_ACL_ASK, 0, NULL, 0, -1), 0);
	gen = acl_sent(f, &acl);
	acl_free(acl);
	taken(f, gen);
	assert_true(nothing_within(f->chan, 100));
	/* A reload that changes nothing sends nothing. */
	assert_int_equal(ipc_send(f->ctl, IPC_AUTH_RELOAD, 0, NULL, 0, -1), 0);
	assert_true(nothing_within(f->router, 200));
	/* One that changes it: the new ACL and its patterns, stale views once taken. */
	write_file(f->acl_path, "user alice\ntopic read a/secret\npattern write d/%u\n");
	assert_int_equal(ipc_send(f->ctl, IPC_AUTH_RELOAD, 0, NULL, 0, -1), 0);
	assert_int_equal(acl_change_sent(f, "a/secret", "a/x"), 2);
	/* A file that does not parse: nothing changes. */
	write_file(f->acl_path, "topic bogus a/#\n");
	assert_int_equal(ipc_send(f->ctl, IPC_AUTH_RELOAD, 0, NULL, 0, -1), 0);
	assert_true(nothing_within(f->router, 200));
	ask(f, 51, 0, "127.0.0.1:1", "alice", "alice-pw");
	v = verdict(f, user, sizeof(user));
	assert_int_equal(grant_sent(f).conn, 51);
	view = view_of(f, &v);
	assert_int_equal(acl_client_generation(view), 2);
	assert_true(acl_client_check(view, "a/secret", 8, ACL_READ));
	assert_true(acl_client_check(view, "d/alice", 7, ACL_WRITE));
	assert_false(acl_client_check(view, "c/c/x", 5, ACL_WRITE));
	acl_client_free(view);
}

/*
 * A worker (hostile, or its own bound broken) that leaves more exchanges
 * waiting for their final step than auth.max_pending (2 here): the auth
 * role keeps no more, and the one past it is answered CONNACK 3.
 */
static void scram_exchanges_are_bounded_per_channel(void **state)
{
	struct fx *f = *state;
	char user[64];
	struct ipc_auth_fields v;

	for (uint64_t conn = 1; conn <= 3; conn++) {
		ask_scram_first(f, conn, (uint32_t)conn, "alice");
		v = verdict(f, user, sizeof(user));
		assert_int_equal(v.conn, conn);
		if (conn <= 2) {
			assert_int_equal(v.code, MQTT_CONNACK_ACCEPTED);
			assert_true(v.cont && v.data_len > 0);
		} else {
			assert_int_equal(v.code, MQTT_CONNACK_UNAVAILABLE);
			assert_false(v.cont);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(a_password_file_decides, setup, teardown),
		cmocka_unit_test_setup_teardown(a_certificate_identity_needs_its_setting, setup,
						teardown),
		cmocka_unit_test_setup_teardown(a_malformed_request_is_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(scram_exchanges_are_bounded_per_channel, setup,
						teardown),
		cmocka_unit_test_setup_teardown(failures_slow_down_and_bound_the_requests_held,
						setup, teardown),
		cmocka_unit_test_setup_teardown(a_cancel_drops_the_request_at_once, setup, teardown),
		cmocka_unit_test_setup_teardown(a_failing_address_goes_one_at_a_time, setup_wide,
						teardown),
		cmocka_unit_test_setup_teardown(a_reload_is_a_transaction, setup, teardown),
		cmocka_unit_test_setup_teardown(a_token_names_its_client_and_carries_its_lists,
						setup_jwt, teardown),
		cmocka_unit_test_setup_teardown(an_acl_file_goes_to_the_router_and_into_each_verdict,
						setup_acl, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	log_init(LOG_LVL_WARN, LOG_FMT_TEXT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
