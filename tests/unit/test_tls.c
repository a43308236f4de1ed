/*
 * test_tls.c - TLS with the private key in the key role: real handshakes
 * between an OpenSSL client and a worker's side (daemon/worker_tls.c),
 * whose signature is made by the real key role (keys_main, in a child)
 * over a real socketpair; RSA-2048 and P-256, TLS 1.2 and 1.3; a session
 * ticket issued by one worker and taken by another; a key that does not
 * match its certificate refused at the role's start; and the channel's
 * codec (common/ipc_keys.c) on bad input.
 *
 * The certificates are made here with OpenSSL, in a temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "files.h"
#include "ipc.h"
#include "log.h"
#include "privsep.h"
#include "role.h"
#include "roles.h"
#include "worker_tls.h"

#define WAIT_MS 10000

static char dir[] = "/tmp/iotd-test-tls.XXXXXX";

/* A key: "rsa" (2048 bits), "rsa3072" or "ec" (P-256). */
static EVP_PKEY *key_new(const char *kind)
{
	EVP_PKEY *k = strcmp(kind, "rsa") == 0 ? EVP_RSA_gen(2048) :
		      strcmp(kind, "rsa3072") == 0 ? EVP_RSA_gen(3072) : EVP_EC_gen("P-256");

	assert_non_null(k);
	return k;
}

/* A self-signed certificate for key, CN "iotd-test", SAN DNS:localhost. */
static X509 *cert_new(EVP_PKEY *key)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_get_subject_name(x);
	X509V3_CTX v3;
	X509_EXTENSION *ext;

	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"iotd-test",
				   -1, -1, 0);
	X509_set_issuer_name(x, name);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost");
	assert_non_null(ext);
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	return x;
}

static void write_key(const char *path, EVP_PKEY *key)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
}

static void write_cert(const char *path, X509 *x)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, x), 1);
	fclose(f);
}

/* The files of one test: cert.pem and key.pem, the key matching or not. */
static void files_make(const char *kind, bool matching, struct iotd_config *cfg)
{
	EVP_PKEY *key = key_new(kind), *other = matching ? NULL : key_new(kind);
	X509 *x = cert_new(key);

	config_defaults(cfg);
	snprintf(cfg->tls_cert_file, sizeof(cfg->tls_cert_file), "%s/cert.pem", dir);
	snprintf(cfg->tls_key_file, sizeof(cfg->tls_key_file), "%s/key.pem", dir);
	write_cert(cfg->tls_cert_file, x);
	write_key(cfg->tls_key_file, matching ? key : other);
	X509_free(x);
	EVP_PKEY_free(key);
	EVP_PKEY_free(other);
}

/* A key and its self-signed certificate in dir/<name>.key and .pem (CN "iotd-test"). */
static void pair_make(const char *name, const char *kind, char *cert, char *key, size_t len)
{
	EVP_PKEY *k = key_new(kind);
	X509 *x = cert_new(k);

	snprintf(cert, len, "%s/%s.pem", dir, name);
	snprintf(key, len, "%s/%s.key", dir, name);
	write_cert(cert, x);
	write_key(key, k);
	X509_free(x);
	EVP_PKEY_free(k);
}

/* The key role in a child, with nworkers channels; the workers' ends in env. */
struct role {
	struct role_env env;
	int ctl;
	pid_t pid;
};

/* The channels, before the role starts: what is written now is waiting when it does. */
static void role_channels(struct role *r, struct iotd_config *cfg, unsigned nworkers)
{
	memset(r, 0, sizeof(*r));
	r->env.cfg = cfg;
	r->env.nworkers = nworkers;
	for (unsigned i = 0; i < nworkers; i++) {
		int sp[2];

		assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC,
					    0, sp), 0);
		r->env.keys_chan[i] = sp[0];
		r->env.keys_chan_worker[i] = sp[1];
	}
}

static void role_fork(struct role *r)
{
	unsigned nworkers = r->env.nworkers;

	r->pid = fork_role(&r->env, &r->ctl);
	if (r->pid == 0) {
		for (unsigned i = 0; i < nworkers; i++)
			close(r->env.keys_chan_worker[i]);
		_exit(keys_main(&r->env));
	}
	for (unsigned i = 0; i < nworkers; i++)
		close(r->env.keys_chan[i]);
}

static void role_start(struct role *r, struct iotd_config *cfg, unsigned nworkers)
{
	role_channels(r, cfg, nworkers);
	role_fork(r);
}

/* The next message from the role on its control socket (waits up to WAIT_MS). */
static uint32_t role_says(struct role *r, char *buf, size_t cap)
{
	struct pollfd p = { .fd = r->ctl, .events = POLLIN };
	struct ipc_hdr hdr;
	int fd;

	assert_int_equal(poll(&p, 1, WAIT_MS), 1);
	assert_true(ipc_recv(r->ctl, &hdr, buf, cap, &fd) >= 0);
	assert_int_equal(fd, -1);
	return hdr.type;
}

/* Stops the role; its exit status. */
static int role_stop(struct role *r)
{
	int status;

	ipc_send(r->ctl, IPC_SHUTDOWN, 0, NULL, 0, -1);
	assert_int_equal(waitpid(r->pid, &status, 0), r->pid);
	close(r->ctl);
	for (unsigned i = 0; i < r->env.nworkers; i++)
		close(r->env.keys_chan_worker[i]);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static unsigned resumed_count;

static void on_resumed(struct tls_conn *c, void *arg)
{
	resumed_count++;
	*(struct tls_conn **)arg = c;
}

/* Waits for the key role's messages, up to ms, and reads them (with epoll, as a worker does). */
static void keys_wait(struct tls_worker *w, int fd, int ms, struct tls_conn **resumed)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN };

	assert_true(ep >= 0);
	assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
	if (epoll_wait(ep, &ev, 1, ms) == 1)
		assert_int_equal(tls_worker_on_keys(w, on_resumed, resumed), 0);
	close(ep);
}

static struct tls_worker *worker_ready(struct iotd_config *cfg, unsigned index, int fd)
{
	struct tls_worker *w = tls_worker_new(cfg, index, fd);
	uint64_t until = clock_ms() + WAIT_MS;

	assert_non_null(w);
	while (!tls_worker_ready(w, 0) && clock_ms() < until)
		keys_wait(w, fd, 100, NULL);
	assert_true(tls_worker_ready(w, 0));
	/* The listener's index is hostile: none past the configuration's certificates. */
	assert_true(tls_worker_serves(w, 0));
	assert_false(tls_worker_serves(w, (uint32_t)config_tls_certs(cfg)));
	assert_false(tls_worker_serves(w, TLS_CERTS_MAX));
	assert_false(tls_worker_serves(w, UINT32_MAX));
	assert_false(tls_worker_ready(w, UINT32_MAX));
	assert_null(tls_conn_new(w, UINT32_MAX, fd, NULL));
	return w;
}

/* The client's certificate and key for the next handshakes; "" for none. */
static char client_cert[200], client_key[200];
/* The certificate the client trusts, when it can no longer read cert_file; else NULL. */
static X509 *client_trust;
/* The identity the worker's side found in the last handshake's client certificate. */
static char identity[256];

/*
 * A client that checks the server's certificate against cert_file and
 * offers ALPN "mqtt", with client_cert if set.
 */
static SSL *client_new(SSL_CTX **ctx, const struct iotd_config *cfg, int version, int fd,
		       SSL_SESSION *resume)
{
	*ctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(*ctx);
	if (client_cert[0]) {
		assert_int_equal(SSL_CTX_use_certificate_file(*ctx, client_cert, SSL_FILETYPE_PEM), 1);
		assert_int_equal(SSL_CTX_use_PrivateKey_file(*ctx, client_key, SSL_FILETYPE_PEM), 1);
	}
	if (client_trust != NULL)
		assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(*ctx), client_trust), 1);
	else
		assert_int_equal(SSL_CTX_load_verify_locations(*ctx, cfg->tls_cert_file, NULL), 1);
	SSL_CTX_set_verify(*ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_min_proto_version(*ctx, version);
	SSL_CTX_set_max_proto_version(*ctx, version);
	assert_int_equal(SSL_CTX_set_alpn_protos(*ctx, (const unsigned char *)"\x04mqtt", 5), 0);
	SSL *s = SSL_new(*ctx);

	assert_non_null(s);
	SSL_set_fd(s, fd);
	SSL_set_tlsext_host_name(s, "localhost");
	if (resume != NULL)
		SSL_set_session(s, resume);
	SSL_set_connect_state(s);
	return s;
}

/*
 * One handshake between a client and worker w's side, then a message
 * each way. Returns whether it finished; *signed_by_role counts the
 * signatures the key role answered.
 */
static bool handshake_on(int sp[2], struct tls_worker *w, int keys_fd,
			 const struct iotd_config *cfg, int version, SSL_SESSION *resume,
			 SSL_SESSION **session, bool *reused)
{
	SSL_CTX *cctx;
	SSL *cs;
	struct tls_conn *c, *resumed = NULL;
	bool client_done = false, server_done = false, failed = false;
	uint64_t until = clock_ms() + WAIT_MS;
	char buf[64];
	size_t n;

	cs = client_new(&cctx, cfg, version, sp[0], resume);
	c = tls_conn_new(w, 0, sp[1], &sp[1]);
	assert_non_null(c);
	while ((!client_done || !server_done) && !failed && clock_ms() < until) {
		if (!client_done) {
			int rc = SSL_do_handshake(cs);

			if (rc == 1)
				client_done = true;
			else if (SSL_get_error(cs, rc) != SSL_ERROR_WANT_READ)
				failed = true;
		}
		if (!server_done) {
			enum tls_result r = tls_conn_handshake(c);

			if (r == TLS_DONE)
				server_done = true;
			else if (r == TLS_WANT_KEYS) {
				resumed = NULL;
				keys_wait(w, keys_fd, 1000, &resumed);
				if (resumed != NULL)
					assert_ptr_equal(tls_conn_owner(resumed), &sp[1]);
			} else if (r != TLS_WANT_READ)
				failed = true;
		}
	}
	if (client_done && server_done) {
		assert_int_equal(SSL_write(cs, "ping", 4), 4);
		assert_int_equal(tls_conn_read(c, buf, sizeof(buf), &n), TLS_DONE);
		assert_int_equal(n, 4);
		assert_memory_equal(buf, "ping", 4);
		assert_int_equal(tls_conn_write(c, "pong", 4, &n), TLS_DONE);
		assert_int_equal(SSL_read(cs, buf, sizeof(buf)), 4);
		assert_memory_equal(buf, "pong", 4);
		assert_int_equal(SSL_version(cs), version);
		assert_string_equal(tls_conn_alpn(c), "mqtt");
		*reused = SSL_session_reused(cs);
		if (tls_conn_identity(c, identity, sizeof(identity)) < 0)
			identity[0] = '\0';
		if (session != NULL)
			*session = SSL_get1_session(cs);
		SSL_shutdown(cs);
	}
	SSL_free(cs);
	SSL_CTX_free(cctx);
	tls_conn_free(c);
	close(sp[0]);
	close(sp[1]);
	return client_done && server_done;
}

/* handshake_on() over a new socketpair. */
static bool handshake(struct tls_worker *w, int keys_fd, const struct iotd_config *cfg,
		      int version, SSL_SESSION *resume, SSL_SESSION **session, bool *reused)
{
	int sp[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
	return handshake_on(sp, w, keys_fd, cfg, version, resume, session, reused);
}

static void handshake_with(const char *kind, int version)
{
	struct iotd_config cfg;
	struct role r;
	struct tls_worker *w;
	char buf[64];
	bool reused;

	files_make(kind, true, &cfg);
	role_start(&r, &cfg, 1);
	assert_int_equal(role_says(&r, buf, sizeof(buf)), IPC_READY);
	w = worker_ready(&cfg, 0, r.env.keys_chan_worker[0]);
	resumed_count = 0;
	assert_true(handshake(w, r.env.keys_chan_worker[0], &cfg, version, NULL, NULL, &reused));
	/* The worker holds no key: the handshake's signature came from the role. */
	assert_int_equal(resumed_count, 1);
	assert_false(reused);
	tls_worker_free(w);
	assert_int_equal(role_stop(&r), 0);
}

static void test_rsa_tls12(void **state) { handshake_with("rsa", TLS1_2_VERSION); }
static void test_rsa_tls13(void **state) { handshake_with("rsa", TLS1_3_VERSION); }
static void test_ec_tls12(void **state) { handshake_with("ec", TLS1_2_VERSION); }
static void test_ec_tls13(void **state) { handshake_with("ec", TLS1_3_VERSION); }

/* A ticket worker 0 issued resumes the session on worker 1, with no signature. */
static void test_ticket_across_workers(void **state)
{
	struct iotd_config cfg;
	struct role r;
	struct tls_worker *w0, *w1;
	SSL_SESSION *session = NULL;
	char buf[64];
	bool reused;

	files_make("ec", true, &cfg);
	role_start(&r, &cfg, 2);
	assert_int_equal(role_says(&r, buf, sizeof(buf)), IPC_READY);
	w0 = worker_ready(&cfg, 0, r.env.keys_chan_worker[0]);
	w1 = worker_ready(&cfg, 1, r.env.keys_chan_worker[1]);
	assert_true(handshake(w0, r.env.keys_chan_worker[0], &cfg, TLS1_2_VERSION, NULL, &session,
			      &reused));
	assert_non_null(session);
	assert_true(SSL_SESSION_has_ticket(session));
	resumed_count = 0;
	assert_true(handshake(w1, r.env.keys_chan_worker[1], &cfg, TLS1_2_VERSION, session, NULL,
			      &reused));
	assert_true(reused);
	assert_int_equal(resumed_count, 0);
	SSL_SESSION_free(session);
	tls_worker_free(w0);
	tls_worker_free(w1);
	assert_int_equal(role_stop(&r), 0);
}

/* A key that does not match the certificate: the role says so and exits 1 when told. */
static void test_wrong_key_refused(void **state)
{
	struct iotd_config cfg;
	struct role r;
	char buf[1024];

	files_make("rsa", false, &cfg);
	role_start(&r, &cfg, 1);
	assert_int_equal(role_says(&r, buf, sizeof(buf)), IPC_KEYS_FAILED);
	assert_contains(buf, "does not match the certificate");
	assert_int_equal(role_stop(&r), 1);
}

/* A client certificate checked against tls.ca_file gives its CN as the identity; none is refused. */
static void test_client_certificate(void **state)
{
	struct iotd_config cfg;
	struct role r;
	struct tls_worker *w;
	char buf[64];
	bool reused;

	files_make("ec", true, &cfg);
	pair_make("client", "ec", client_cert, client_key, sizeof(client_cert));
	snprintf(cfg.tls_ca_file, sizeof(cfg.tls_ca_file), "%s", client_cert);
	cfg.tls_require_certificate = true;
	role_start(&r, &cfg, 1);
	assert_int_equal(role_says(&r, buf, sizeof(buf)), IPC_READY);
	w = worker_ready(&cfg, 0, r.env.keys_chan_worker[0]);
	assert_true(handshake(w, r.env.keys_chan_worker[0], &cfg, TLS1_3_VERSION, NULL, NULL,
			      &reused));
	assert_string_equal(identity, "iotd-test");
	/* Without a certificate the handshake fails (TLS 1.2: before the client finishes). */
	client_cert[0] = '\0';
	assert_false(handshake(w, r.env.keys_chan_worker[0], &cfg, TLS1_2_VERSION, NULL, NULL,
			       &reused));
	tls_worker_free(w);
	assert_int_equal(role_stop(&r), 0);
}

/* The role handled everything sent on its control socket before: a ping answered. */
static void role_synced(struct role *r)
{
	char buf[64];

	assert_int_equal(ipc_send(r->ctl, IPC_PING, 0, NULL, 0, -1), 0);
	assert_int_equal(role_says(r, buf, sizeof(buf)), IPC_PONG);
}

/*
 * A reload with a new key and certificate: the workers get the new chain
 * and handshakes are signed with the new key; one with a key that does not
 * match changes nothing.
 */
static void test_reload(void **state)
{
	struct iotd_config cfg, next;
	struct role r;
	struct tls_worker *w;
	char buf[64], in_force[8192];
	bool reused;
	int fd;

	files_make("rsa", true, &cfg);
	role_start(&r, &cfg, 1);
	assert_int_equal(role_says(&r, buf, sizeof(buf)), IPC_READY);
	fd = r.env.keys_chan_worker[0];
	w = worker_ready(&cfg, 0, fd);
	assert_true(handshake(w, fd, &cfg, TLS1_3_VERSION, NULL, NULL, &reused));
	/* New files at the same paths (an EC key now); the role reads them on reload. */
	files_make("ec", true, &next);
	assert_int_equal(ipc_send(r.ctl, IPC_KEYS_RELOAD, 0, NULL, 0, -1), 0);
	role_synced(&r);
	keys_wait(w, fd, WAIT_MS, NULL);
	/* The client trusts the new certificate only: the new chain and key are in use. */
	assert_true(handshake(w, fd, &cfg, TLS1_3_VERSION, NULL, NULL, &reused));
	snprintf(in_force, sizeof(in_force), "%s", read_file(cfg.tls_cert_file));
	/*
	 * A key that does not match: the reload changes nothing (the client,
	 * trusting the certificate in force only, still gets through).
	 */
	files_make("rsa", false, &next);
	assert_int_equal(ipc_send(r.ctl, IPC_KEYS_RELOAD, 0, NULL, 0, -1), 0);
	role_synced(&r);
	write_file(cfg.tls_cert_file, in_force);
	keys_wait(w, fd, 200, NULL);
	assert_true(handshake(w, fd, &cfg, TLS1_3_VERSION, NULL, NULL, &reused));
	tls_worker_free(w);
	assert_int_equal(role_stop(&r), 0);
}

/*
 * The worker's side under a worker's own confinement (privsep_enter: as
 * root the chroot, the children's user, Landlock and its seccomp filter):
 * with OpenSSL set up before (tls_worker_preinit), a whole handshake
 * through the key role makes no system call the worker may not make.
 */
static void test_confined_worker(void **state)
{
	struct iotd_config cfg;
	struct role r;
	char buf[64];
	pid_t pid;
	int status;

	files_make("rsa", true, &cfg);
	role_start(&r, &cfg, 1);
	assert_int_equal(role_says(&r, buf, sizeof(buf)), IPC_READY);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct privsep ps;
		struct tls_worker *w;
		int sp[2], fd = r.env.keys_chan_worker[0];
		FILE *f = fopen(cfg.tls_cert_file, "r");
		bool reused, ok;

		client_trust = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
		if (f != NULL)
			fclose(f);
		if (client_trust == NULL || tls_worker_preinit() < 0 ||
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0 ||
		    privsep_prepare(&ps, "nobody") < 0 || privsep_enter(&ps, ROLE_WORKER, getppid()) < 0)
			_exit(2);
		w = worker_ready(&cfg, 0, fd);
		ok = handshake_on(sp, w, fd, &cfg, TLS1_3_VERSION, NULL, NULL, &reused);
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("the confined worker %s %d", WIFEXITED(status) ? "exited with" :
			 "was killed by signal", WIFEXITED(status) ? WEXITSTATUS(status) :
			 WTERMSIG(status));
	assert_int_equal(role_stop(&r), 0);
}

/* --- the key role as the workers' peer, through its channels ---------------------- */

/* One ECDSA request over SHA-256, as a worker sends it. */
static void send_ecdsa(int fd, unsigned index, uint64_t id, uint32_t key_id)
{
	uint8_t digest[32] = { (uint8_t)id }, buf[IPC_KEYS_SIGN_LEN_MAX];
	struct ipc_keys_fields f = { .id = id, .key_id = key_id, .alg = IPC_KEYS_ECDSA,
				     .md = IPC_KEYS_MD_SHA256, .data = digest, .len = 32 };
	size_t len = ipc_keys_sign_encode(&f, buf);

	assert_true(len > 0);
	assert_int_equal(ipc_send(fd, IPC_KEYS_SIGN, index, buf, len, -1), 0);
}

/* The next answer on a worker's channel (chain and tickets skipped), within WAIT_MS. */
static struct ipc_keys_fields next_answer(int fd, uint8_t *buf)
{
	uint64_t until = clock_ms() + WAIT_MS;
	struct ipc_keys_fields a;

	while (clock_ms() < until) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		struct ipc_hdr hdr;
		int rfd;
		ssize_t n;

		if (poll(&p, 1, 100) != 1)
			continue;
		n = ipc_recv(fd, &hdr, buf, IPC_MAX_PAYLOAD, &rfd);
		assert_true(n >= 0);
		if (hdr.type != IPC_KEYS_SIGNED)
			continue;
		assert_true(ipc_keys_signed_decode(buf, (size_t)n, &a));
		return a;
	}
	fail_msg("no answer from the key role");
	return a;
}

/* How many answers wait on fd now. */
static unsigned answers_waiting(int fd, uint8_t *buf)
{
	struct ipc_hdr hdr;
	unsigned n = 0;
	int rfd;

	while (ipc_recv_fds_nowait(fd, &hdr, buf, IPC_MAX_PAYLOAD, &rfd, 1, &(unsigned){ 0 }) >= 0)
		n += hdr.type == IPC_KEYS_SIGNED;
	return n;
}

/*
 * Worker 0 floods the role with requests, worker 1 sends one: worker 1's
 * is answered after at most a round of worker 0's, not after all of them.
 */
static void test_round_robin(void **state)
{
	struct iotd_config cfg;
	struct role r;
	struct ipc_keys_fields a;
	uint8_t *buf = malloc(IPC_MAX_PAYLOAD);
	char msg[64];
	unsigned before;

	assert_non_null(buf);
	files_make("rsa3072", true, &cfg);
	cfg.tls_max_pending_signs = 128;
	role_channels(&r, &cfg, 2);
	for (uint64_t id = 1; id <= 128; id++) {
		uint8_t digest[32] = { (uint8_t)id }, req[IPC_KEYS_SIGN_LEN_MAX];
		struct ipc_keys_fields f = { .id = id, .key_id = 1, .alg = IPC_KEYS_RSA_PKCS1,
					     .md = IPC_KEYS_MD_SHA256, .data = digest, .len = 32 };

		assert_int_equal(ipc_send(r.env.keys_chan_worker[0], IPC_KEYS_SIGN, 0, req,
					  ipc_keys_sign_encode(&f, req), -1), 0);
	}
	{
		uint8_t digest[32] = { 0 }, req[IPC_KEYS_SIGN_LEN_MAX];
		struct ipc_keys_fields f = { .id = 1000, .key_id = 1, .alg = IPC_KEYS_RSA_PKCS1,
					     .md = IPC_KEYS_MD_SHA256, .data = digest, .len = 32 };

		assert_int_equal(ipc_send(r.env.keys_chan_worker[1], IPC_KEYS_SIGN, 1, req,
					  ipc_keys_sign_encode(&f, req), -1), 0);
	}
	role_fork(&r);
	assert_int_equal(role_says(&r, msg, sizeof(msg)), IPC_READY);
	a = next_answer(r.env.keys_chan_worker[1], buf);
	assert_int_equal(a.id, 1000);
	assert_int_equal(a.status, IPC_KEYS_OK);
	before = answers_waiting(r.env.keys_chan_worker[0], buf);
	assert_true(before < 64);
	free(buf);
	assert_int_equal(role_stop(&r), 0);
}

/*
 * What a compromised worker may send: a malformed request (dropped, the
 * role serves on), another key's id, an algorithm of another key, and for
 * RSA-PSS bytes that are no PSS encoding (a ciphertext to decrypt): each
 * refused with its status, never signed.
 */
static void test_hostile_requests(void **state)
{
	struct iotd_config cfg;
	struct role r;
	struct ipc_keys_fields a, f;
	uint8_t *buf = malloc(IPC_MAX_PAYLOAD), req[IPC_KEYS_SIGN_LEN_MAX], em[256];
	char msg[64];
	int fd;

	assert_non_null(buf);
	files_make("rsa", true, &cfg);
	role_start(&r, &cfg, 1);
	assert_int_equal(role_says(&r, msg, sizeof(msg)), IPC_READY);
	fd = r.env.keys_chan_worker[0];
	memset(req, 0xff, sizeof(struct ipc_keys_sign) + 8);
	assert_int_equal(ipc_send(fd, IPC_KEYS_SIGN, 0, req, sizeof(struct ipc_keys_sign) + 8, -1), 0);
	send_ecdsa(fd, 0, 1, 2);
	a = next_answer(fd, buf);
	assert_int_equal(a.id, 1);
	assert_int_equal(a.status, IPC_KEYS_WRONG_KEY);
	send_ecdsa(fd, 0, 2, 1);
	a = next_answer(fd, buf);
	assert_int_equal(a.id, 2);
	assert_int_equal(a.status, IPC_KEYS_WRONG_ALG);
	for (size_t i = 0; i < sizeof(em); i++)
		em[i] = (uint8_t)(i * 7 + 1);
	em[0] = 0x12;
	em[255] = 0xbc;
	f = (struct ipc_keys_fields){ .id = 3, .key_id = 1, .alg = IPC_KEYS_RSA_PSS, .data = em,
				      .len = sizeof(em) };
	assert_int_equal(ipc_send(fd, IPC_KEYS_SIGN, 0, req, ipc_keys_sign_encode(&f, req), -1), 0);
	a = next_answer(fd, buf);
	assert_int_equal(a.id, 3);
	assert_int_equal(a.status, IPC_KEYS_WRONG_ALG);
	free(buf);
	assert_int_equal(role_stop(&r), 0);
}

/* --- the codec ------------------------------------------------------------------- */

static void test_sign_codec(void **state)
{
	uint8_t digest[48] = { 1 }, buf[IPC_KEYS_SIGN_LEN_MAX];
	struct ipc_keys_fields f = { .id = 7, .key_id = 1, .alg = IPC_KEYS_ECDSA,
				     .md = IPC_KEYS_MD_SHA384, .data = digest, .len = 48 }, g;
	size_t len = ipc_keys_sign_encode(&f, buf);

	assert_int_equal(len, sizeof(struct ipc_keys_sign) + 48);
	assert_true(ipc_keys_sign_decode(buf, len, &g));
	assert_int_equal(g.id, 7);
	assert_int_equal(g.alg, IPC_KEYS_ECDSA);
	assert_memory_equal(g.data, digest, 48);
	/* A length that is not the digest's, a cut payload, an unknown algorithm or digest. */
	assert_false(ipc_keys_sign_decode(buf, len - 1, &g));
	buf[offsetof(struct ipc_keys_sign, md)] = IPC_KEYS_MD_SHA256;
	assert_false(ipc_keys_sign_decode(buf, len, &g));
	buf[offsetof(struct ipc_keys_sign, md)] = IPC_KEYS_MD_MAX;
	assert_false(ipc_keys_sign_decode(buf, len, &g));
	buf[offsetof(struct ipc_keys_sign, md)] = IPC_KEYS_MD_SHA384;
	buf[offsetof(struct ipc_keys_sign, alg)] = IPC_KEYS_ALG_MAX;
	assert_false(ipc_keys_sign_decode(buf, len, &g));
	/* Ed25519: data, no digest; never over IPC_KEYS_DATA_MAX. */
	f.alg = IPC_KEYS_ED25519;
	assert_int_equal(ipc_keys_sign_encode(&f, buf), 0);
	f.md = IPC_KEYS_MD_NONE;
	assert_true(ipc_keys_sign_encode(&f, buf) > 0);
	f.len = IPC_KEYS_DATA_MAX + 1;
	assert_int_equal(ipc_keys_sign_encode(&f, buf), 0);
}

/* A chain names its certificate, one of those a configuration can have. */
static void test_chain_codec(void **state)
{
	struct ipc_keys_pem p = { .key_id = 7, .cert = 2, .chain = "PEM", .chain_len = 3,
				  .trust = "CA", .trust_len = 2 }, q;
	size_t len;
	uint8_t *buf = ipc_keys_chain_encode(&p, &len);

	assert_non_null(buf);
	assert_true(ipc_keys_chain_decode(buf, len, &q));
	assert_int_equal(q.key_id, 7);
	assert_int_equal(q.cert, 2);
	assert_int_equal(q.chain_len, 3);
	assert_memory_equal(q.chain, "PEM", 3);
	assert_memory_equal(q.trust, "CA", 2);
	free(buf);
	p.cert = TLS_CERTS_MAX;
	buf = ipc_keys_chain_encode(&p, &len);
	assert_false(ipc_keys_chain_decode(buf, len, &q));
	free(buf);
}

static void test_signed_codec(void **state)
{
	uint8_t sig[256] = { 9 }, buf[IPC_KEYS_SIGNED_LEN_MAX];
	struct ipc_keys_fields a = { .id = 3, .data = sig, .len = 256 }, b;
	size_t len = ipc_keys_signed_encode(&a, buf);

	assert_true(ipc_keys_signed_decode(buf, len, &b));
	assert_int_equal(b.len, 256);
	assert_false(ipc_keys_signed_decode(buf, len + 1, &b));
	/* A failure carries no signature; success carries one. */
	a.status = IPC_KEYS_SIGN_FAILED;
	assert_int_equal(ipc_keys_signed_encode(&a, buf), 0);
	a.len = 0;
	len = ipc_keys_signed_encode(&a, buf);
	assert_true(ipc_keys_signed_decode(buf, len, &b));
	a.status = IPC_KEYS_OK;
	len = ipc_keys_signed_encode(&a, buf);
	assert_false(ipc_keys_signed_decode(buf, len, &b));
}

static void test_config_tls(void **state)
{
	char path[] = "/tmp/iotd-test-tls-conf.XXXXXX", err[CONFIG_ERR_LEN];
	struct cli_args args = { .config_path = path, .config_explicit = true, .workers = -1 };
	struct iotd_config cfg;
	char *const envp[] = { NULL };

	temp_file(path, "tls { cert_file = \"/x/cert.pem\" }\n");
	assert_int_equal(config_load(&cfg, &args, envp, err, sizeof(err)), -1);
	assert_contains(err, "cert_file needs key_file");
	write_file(path, "server { listen_addresses = { \"mqtts://:8883\" } }\n"
		   "tls { cert_file = \"/x/c.pem\"\n key_file = \"/x/k.pem\"\n"
		   "use_identity_as_username = true }\n");
	assert_int_equal(config_load(&cfg, &args, envp, err, sizeof(err)), -1);
	assert_contains(err, "use_identity_as_username needs require_certificate");
	write_file(path, "tls { cert_file = \"/x/c.pem\"\n key_file = \"/x/k.pem\"\n"
		   "min_version = \"tlsv1.3\"\n handshake_timeout = 5 }\n");
	assert_int_equal(config_load(&cfg, &args, envp, err, sizeof(err)), 0);
	assert_true(config_tls(&cfg));
	assert_string_equal(cfg.tls_min_version, "tlsv1.3");
	assert_int_equal(cfg.tls_handshake_timeout, 5);
	write_file(path, "tls { handshake_timeout = 301 }\n");
	assert_int_equal(config_load(&cfg, &args, envp, err, sizeof(err)), -1);
	unlink(path);
}

static int setup(void **state)
{
	assert_non_null(mkdtemp(dir));
	log_set_level(LOG_LVL_ERROR);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

static int teardown(void **state)
{
	char path[300];

	snprintf(path, sizeof(path), "%s/cert.pem", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/key.pem", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/client.pem", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/client.key", dir);
	unlink(path);
	rmdir(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sign_codec),
		cmocka_unit_test(test_signed_codec),
		cmocka_unit_test(test_chain_codec),
		cmocka_unit_test(test_config_tls),
		cmocka_unit_test(test_wrong_key_refused),
		cmocka_unit_test(test_rsa_tls12),
		cmocka_unit_test(test_rsa_tls13),
		cmocka_unit_test(test_ec_tls12),
		cmocka_unit_test(test_ec_tls13),
		cmocka_unit_test(test_ticket_across_workers),
		cmocka_unit_test(test_client_certificate),
		cmocka_unit_test(test_reload),
		cmocka_unit_test(test_confined_worker),
		cmocka_unit_test(test_round_robin),
		cmocka_unit_test(test_hostile_requests),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
