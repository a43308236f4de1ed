/*
 * worker_tls.c - a worker's TLS (worker_tls.h): an SSL_CTX per
 * certificate, made from what the key role sends (each certificate's
 * chain and clients' CAs, the session-ticket keys), the connections'
 * handshakes and records, the handshake's signature sent to the key
 * role and waited for, and the memory a burst of handshakes held given
 * back when it ends.
 *
 * The worker never holds the server's private key. Its SSL_CTX holds a
 * stand-in made from the certificate's public key: an RSA key with an
 * RSA_METHOD of its own, or an EC key with an EC_KEY_METHOD, which
 * OpenSSL 3.0 treats as a legacy ("foreign") key and signs with through
 * those methods. Their private-key operations send the request to the
 * key role (IPC_KEYS_SIGN) and pause the handshake's async job
 * (SSL_MODE_ASYNC: SSL_do_handshake returns SSL_ERROR_WANT_ASYNC); the
 * answer (IPC_KEYS_SIGNED) resumes it. PKCS#1 v1.5 and ECDSA give the
 * digest; for RSA-PSS OpenSSL encodes the digest itself and asks for the
 * raw RSA operation on the encoding, which the key role checks is a PSS
 * encoding before it signs (keys_files.c). Those methods are deprecated
 * in OpenSSL 3.0, and this is the one file that uses them
 * (OPENSSL_SUPPRESS_DEPRECATED); tests/unit/test_tls.c checks that
 * OpenSSL does call them, for RSA-PSS (TLS 1.3), RSA PKCS#1 (TLS 1.2)
 * and ECDSA. Ed25519 certificates cannot be stood in for so (no legacy
 * method): the key role refuses such keys at the start.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <assert.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/async.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "keyhash.h"
#include "iotd.h"
#include "ipc.h"
#include "log.h"
#include "worker_tls.h"

#define KEYS_MSGS_PER_WAKE 64
#define BURST_MIN 8                  /* handshakes at once that make a burst (burst_release) */
#define BURST_RELEASE_GAP_MS 250     /* at most one burst_release() so often between ticks */

/* A signature in flight: on its handshake's paused job's stack (signature_of). */
struct tls_sign {
	uint64_t id;                 /* its request's id, in w->signing; 0: in none */
	struct tls_conn *c;
	struct ipc_keys_fields *req; /* its request, on the same stack */
	UT_hash_handle hh;           /* in w->signing, by id */
	/* Where the answer goes: OpenSSL's buffer. */
	uint8_t *sig;
	size_t sig_len, sig_cap;
	uint32_t status;
	bool answered;               /* the answer came (or never will) */
};

/* What an idle connection holds beyond OpenSSL's SSL: kept small. */
struct tls_conn {
	struct tls_worker *w;
	SSL *ssl;
	void *owner;
	struct tls_sign *sign;       /* the signature in flight; NULL: none */
	uint32_t key_id;             /* the chain's its SSL_CTX was made from */
	uint8_t cert;                /* the certificate it presents (TLS_CERTS_MAX) */
	bool handshaking;            /* counted in w->handshakes */
	bool drained;                /* the last read wanted the socket: no whole record buffered */
};

static_assert(TLS_CERTS_MAX <= 256, "tls_conn.cert holds a certificate's index");

struct tls_worker {
	const struct iotd_config *cfg;
	unsigned index;
	int keys_fd;
	struct ipc_dispatcher in;
	int ncerts;                  /* config_tls_certs: the certificates a listener may name */
	SSL_CTX *ctx[TLS_CERTS_MAX]; /* for new connections; NULL until the chain came */
	uint32_t key_id[TLS_CERTS_MAX];
	struct ipc_keys_tickets tickets;
	uint64_t next_id;
	struct tls_sign *signing;    /* the signatures waited for, by id */
	void (*resumed)(struct tls_conn *c, void *arg); /* during tls_worker_on_keys */
	void *arg;
	bool send_logged;
	bool jobs_pooled;            /* a handshake paused since the pool was last emptied */
	unsigned handshakes;         /* connections whose handshake has not ended */
	unsigned handshakes_peak;    /* the most at once since burst_release() */
	bool heap_dirty;             /* a handshake ended since burst_release() */
	uint64_t released_ms;        /* burst_release()'s last time */
};

/*
 * The connection whose SSL call is running: the sign hook runs inside
 * it, with only OpenSSL's context in hand. A worker has one thread.
 */
static struct tls_conn *tls_current;

/* The stand-ins' methods, made once per process. */
static RSA_METHOD *stub_rsa_method;
static EC_KEY_METHOD *stub_ec_method;

/* --- the signature, sent and waited for ----------------------------------------- */

static uint8_t md_of_nid(int nid)
{
	switch (nid) {
	case NID_sha256: return IPC_KEYS_MD_SHA256;
	case NID_sha384: return IPC_KEYS_MD_SHA384;
	case NID_sha512: return IPC_KEYS_MD_SHA512;
	default: return IPC_KEYS_MD_NONE;
	}
}

/* f to the key role under a new request id; false when it did not go (errno). */
static bool request_write(struct tls_worker *w, struct ipc_keys_fields *f)
{
	uint8_t buf[IPC_KEYS_SIGN_LEN_MAX];
	size_t len;

	f->id = ++w->next_id;
	if ((len = ipc_keys_sign_encode(f, buf)) == 0) {
		errno = EMSGSIZE;
		return false;
	}
	return ipc_send(w->keys_fd, IPC_KEYS_SIGN, w->index, buf, len, -1) == 0;
}

/* Send c's request; false when the channel is full or broken (logged once). */
static bool request_send(struct tls_conn *c, struct tls_sign *sg)
{
	struct tls_worker *w = c->w;

	sg->req->key_id = c->key_id;
	if (!request_write(w, sg->req)) {
		if (!w->send_logged)
			log_warn("cannot ask the key role for a signature: %s; the handshake "
				 "fails (further ones unlogged)", strerror(errno));
		w->send_logged = true;
		return false;
	}
	sg->id = sg->req->id;
	HASH_ADD(hh, w->signing, id, sizeof(sg->id), sg);
	w->jobs_pooled = true;
	return true;
}

/*
 * Inside the handshake's async job: the request goes, the job pauses
 * until the answer came (the handshake returns TLS_WANT_KEYS meanwhile),
 * and the signature is copied out. Its length, or -1.
 */
static long signature_of(struct ipc_keys_fields *f, uint8_t *sig, size_t cap)
{
	struct tls_conn *c = tls_current;
	struct tls_sign sg = { .c = c, .req = f, .sig = sig, .sig_cap = cap };
	long n;

	if (c == NULL || ASYNC_get_current_job() == NULL || !request_send(c, &sg))
		return -1;
	c->sign = &sg;
	while (!sg.answered)
		if (!ASYNC_pause_job())
			break;
	if (sg.id != 0)              /* no answer, and no pause: it leaves the stack */
		HASH_DEL(c->w->signing, &sg);
	c->sign = NULL;
	n = sg.answered && sg.status == IPC_KEYS_OK ? (long)sg.sig_len : -1;
	if (n < 0)
		log_debug("the key role did not sign (status %u)", sg.status);
	return n;
}

/* RSASSA-PKCS1-v1_5 (TLS 1.2): OpenSSL hands over the digest and its type. */
static int stub_rsa_sign(int type, const unsigned char *m, unsigned int m_len,
			 unsigned char *sig, unsigned int *sig_len, const RSA *rsa)
{
	struct ipc_keys_fields f = { .alg = IPC_KEYS_RSA_PKCS1, .md = md_of_nid(type),
				     .data = m, .len = m_len };
	long n = signature_of(&f, sig, (size_t)RSA_size(rsa));

	if (n < 0)
		return 0;
	*sig_len = (unsigned int)n;
	return 1;
}

/*
 * RSASSA-PSS (TLS 1.3, and TLS 1.2 when asked): OpenSSL encodes the
 * digest itself and asks for the raw operation on the encoding, which
 * the key role checks is one (IPC_KEYS_RSA_PSS).
 */
static int stub_rsa_priv_enc(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
			     int padding)
{
	struct ipc_keys_fields f = { .alg = IPC_KEYS_RSA_PSS, .data = from, .len = (size_t)flen };

	if (padding != RSA_NO_PADDING)
		return -1;
	return (int)signature_of(&f, to, (size_t)RSA_size(rsa));
}

/* ECDSA: the digest, and its type (else told by its length); the signature is DER. */
static int stub_ec_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig,
			unsigned int *siglen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
{
	uint8_t md = md_of_nid(type);
	struct ipc_keys_fields f = { .alg = IPC_KEYS_ECDSA, .data = dgst, .len = (size_t)dlen };
	long n;

	f.md = md != IPC_KEYS_MD_NONE ? md : dlen == 32 ? IPC_KEYS_MD_SHA256 :
	       dlen == 48 ? IPC_KEYS_MD_SHA384 : dlen == 64 ? IPC_KEYS_MD_SHA512 : IPC_KEYS_MD_NONE;
	n = signature_of(&f, sig, (size_t)ECDSA_size(eckey));
	if (n < 0)
		return 0;
	*siglen = (unsigned int)n;
	return 1;
}

/* The methods, once per process: OpenSSL's, with the private-key operations ours. */
static int stub_methods_init(void)
{
	int (*sign)(int, const unsigned char *, int, unsigned char *, unsigned int *,
		    const BIGNUM *, const BIGNUM *, EC_KEY *) = NULL;
	int (*sign_setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;
	ECDSA_SIG *(*sign_sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *,
			       EC_KEY *) = NULL;

	if (stub_rsa_method != NULL)
		return 0;
	stub_rsa_method = RSA_meth_dup(RSA_get_default_method());
	stub_ec_method = EC_KEY_METHOD_new(EC_KEY_get_default_method());
	if (stub_rsa_method == NULL || stub_ec_method == NULL)
		return -1;
	RSA_meth_set1_name(stub_rsa_method, "iotd key role");
	RSA_meth_set_sign(stub_rsa_method, stub_rsa_sign);
	RSA_meth_set_priv_enc(stub_rsa_method, stub_rsa_priv_enc);
	EC_KEY_METHOD_get_sign(stub_ec_method, &sign, &sign_setup, &sign_sig);
	EC_KEY_METHOD_set_sign(stub_ec_method, stub_ec_sign, sign_setup, sign_sig);
	return 0;
}

/* The stand-in for the certificate's key: its public part, with our method. */
static EVP_PKEY *stub_of(EVP_PKEY *pub)
{
	EVP_PKEY *k = EVP_PKEY_new();

	if (k != NULL && EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA) {
		BIGNUM *n = NULL, *e = NULL;
		RSA *r = RSA_new();

		if (r != NULL && RSA_set_method(r, stub_rsa_method) &&
		    EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_N, &n) &&
		    EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_E, &e) &&
		    RSA_set0_key(r, n, e, NULL) && EVP_PKEY_assign_RSA(k, r))
			return k;
		BN_free(n);
		BN_free(e);
		RSA_free(r);
	} else if (k != NULL && EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC) {
		EC_KEY *src = EVP_PKEY_get1_EC_KEY(pub), *e = EC_KEY_new();

		if (src != NULL && e != NULL && EC_KEY_set_method(e, stub_ec_method) &&
		    EC_KEY_set_group(e, EC_KEY_get0_group(src)) &&
		    EC_KEY_set_public_key(e, EC_KEY_get0_public_key(src)) &&
		    EVP_PKEY_assign_EC_KEY(k, e)) {
			EC_KEY_free(src);
			return k;
		}
		EC_KEY_free(src);
		EC_KEY_free(e);
	}
	EVP_PKEY_free(k);
	return NULL;
}

/* OpenSSL's last error, for a log line, and the queue cleared. */
static const char *ssl_reason(void)
{
	const char *why = ERR_reason_error_string(ERR_peek_last_error());

	ERR_clear_error();
	return why != NULL ? why : "no reason given";
}

/* --- the SSL_CTX ------------------------------------------------------------------- */

/* ALPN: "mqtt" when the client offers it; a client that offers others goes on without. */
static int alpn_select(SSL *s, const unsigned char **out, unsigned char *outlen,
		       const unsigned char *in, unsigned inlen, void *arg)
{
	static const unsigned char mqtt[] = "\x04mqtt";
	unsigned char *sel;

	if (SSL_select_next_proto(&sel, outlen, mqtt, sizeof(mqtt) - 1, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

/*
 * Session tickets under the key role's keys, the same in every worker:
 * the newest issues them, either opens them (the older asks for a new
 * ticket). Without keys yet, no ticket.
 */
static int ticket_keys(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
		       EVP_MAC_CTX *hctx, int enc)
{
	struct tls_worker *w = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
	const struct ipc_ticket_key *k = NULL;
	OSSL_PARAM params[3];
	int rc = 1;

	if (w->tickets.n == 0)
		return 0;
	if (enc) {
		k = &w->tickets.keys[0];
		memcpy(name, k->name, sizeof(k->name));
		if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
			return -1;
	} else {
		for (uint32_t i = 0; i < w->tickets.n && k == NULL; i++)
			if (memcmp(name, w->tickets.keys[i].name, sizeof(k->name)) == 0) {
				k = &w->tickets.keys[i];
				rc = i == 0 ? 1 : 2;
			}
		if (k == NULL)
			return 0;
	}
	params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac,
						      sizeof(k->hmac));
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
	params[2] = OSSL_PARAM_construct_end();
	if (EVP_CipherInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv, enc) != 1 ||
	    EVP_MAC_CTX_set_params(hctx, params) != 1)
		return -1;
	return rc;
}

/* The certificate, then its chain, and the stand-in for its key. */
static bool ctx_use_chain(SSL_CTX *ctx, const struct ipc_keys_pem *p)
{
	BIO *b = BIO_new_mem_buf(p->chain, (int)p->chain_len);
	X509 *leaf = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL, *x;
	EVP_PKEY *stub = leaf != NULL ? stub_of(X509_get0_pubkey(leaf)) : NULL;
	bool ok = stub != NULL && SSL_CTX_use_certificate(ctx, leaf) == 1 &&
		  SSL_CTX_use_PrivateKey(ctx, stub) == 1;

	if (leaf != NULL && stub == NULL)
		log_error("TLS: the workers cannot use a certificate of this key type yet (RSA "
			  "and EC only)");
	while (ok && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
		if (!(ok = SSL_CTX_add0_chain_cert(ctx, x) == 1))
			X509_free(x);
	ERR_clear_error();
	EVP_PKEY_free(stub);
	X509_free(leaf);
	BIO_free(b);
	return ok;
}

/* The clients' CAs and CRLs: a client's certificate is asked for and checked. */
static bool ctx_use_trust(SSL_CTX *ctx, bool require_certificate, const struct ipc_keys_pem *p)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	BIO *b;
	STACK_OF(X509_INFO) *infos;
	bool crls = false;

	if (p->trust_len == 0)
		return true;
	if ((b = BIO_new_mem_buf(p->trust, (int)p->trust_len)) == NULL)
		return false;
	infos = PEM_X509_INFO_read_bio(b, NULL, NULL, NULL);
	BIO_free(b);
	if (infos == NULL)
		return false;
	for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
		X509_INFO *xi = sk_X509_INFO_value(infos, i);

		if (xi->x509 != NULL)
			X509_STORE_add_cert(store, xi->x509);
		if (xi->crl != NULL && X509_STORE_add_crl(store, xi->crl) == 1)
			crls = true;
	}
	sk_X509_INFO_pop_free(infos, X509_INFO_free);
	if (crls)
		X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
	/*
	 * A certificate is asked for only when one is required, as Mosquitto
	 * does: a browser asked for one it does not have abandons the
	 * handshake rather than going on without.
	 */
	if (require_certificate)
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	return true;
}

static SSL_CTX *ctx_make(struct tls_worker *w, const struct ipc_keys_pem *p)
{
	const struct iotd_config *cfg = w->cfg;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	struct tls_cert_files tc;
	bool ok = ctx != NULL;

	config_tls_cert(cfg, (int)p->cert, &tc);

	if (ok) {
		SSL_CTX_set_app_data(ctx, w);
		SSL_CTX_set_mode(ctx, SSL_MODE_ASYNC | SSL_MODE_ENABLE_PARTIAL_WRITE |
			       SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
		/*
		 * Read ahead: one read(2) takes every record the socket holds (up
		 * to TLS_READ_AHEAD bytes), not a header and a body per record;
		 * the buffer is released when empty, so an idle connection holds none.
		 */
		SSL_CTX_set_read_ahead(ctx, 1);
		SSL_CTX_set_default_read_buffer_len(ctx, TLS_READ_AHEAD);
		/*
		 * No renegotiation: a client could ask for signatures without
		 * end. A client that closes without close_notify has closed: MQTT
		 * frames its packets, a cut cannot pass for a whole one.
		 */
		SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
					 SSL_OP_IGNORE_UNEXPECTED_EOF);
		SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
		SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_keys);
		SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"iotd", 4);
		/*
		 * Tickets alone resume sessions: no cache holding one per
		 * connection. One ticket per handshake (OpenSSL sends two), as a
		 * resumption brings a new one: each costs a copy of the session,
		 * its encoding and encryption.
		 */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_num_tickets(ctx, 1);
		ok = SSL_CTX_set_min_proto_version(ctx, strcmp(cfg->tls_min_version, "tlsv1.3") == 0 ?
							 TLS1_3_VERSION : TLS1_2_VERSION) == 1;
	}
	ok = ok && (!cfg->tls_ciphers[0] || SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) == 1) &&
	     (!cfg->tls_ciphersuites[0] || SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites) == 1) &&
	     (!cfg->tls_groups[0] || SSL_CTX_set1_groups_list(ctx, cfg->tls_groups) == 1) &&
	     ctx_use_chain(ctx, p) && ctx_use_trust(ctx, tc.require_certificate, p);
	if (!ok) {
		log_error("TLS: cannot set up (%s): new TLS connections are refused", ssl_reason());
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/* --- the key role's channel --------------------------------------------------------- */

/*
 * One unanswered request again, under a new request id: an answer to the
 * one before, which a new key role may still read from the channel, finds
 * no one. A handshake presenting the certificate of the chain that came
 * (now) asks for the key id that goes with it now: a key role started
 * again numbers its keys anew, and the id asked for before may be unknown
 * to it (or another key's). One presenting another keeps its id, which a
 * reloaded key role still signs with. False when the channel is full.
 */
static bool request_resend(struct tls_worker *w, struct tls_sign *sg, const X509 *now)
{
	struct tls_conn *c = sg->c;
	uint64_t before = sg->req->id;

	if (X509_cmp(SSL_CTX_get0_certificate(SSL_get_SSL_CTX(c->ssl)), now) == 0)
		c->key_id = sg->req->key_id = w->key_id[c->cert];
	if (!request_write(w, sg->req)) {
		sg->req->id = before;
		return false;
	}
	sg->id = sg->req->id;
	return true;
}

/*
 * A chain comes from a key role that started (or reloaded): the requests
 * still unanswered for that certificate go again, as a key role that died
 * took its queue with it. What cannot go (a full channel) waits under its
 * id until tls.handshake_timeout.
 */
static void requests_resend(struct tls_worker *w, uint32_t cert)
{
	const X509 *now = SSL_CTX_get0_certificate(w->ctx[cert]);
	struct tls_sign *sg, *tmp, *again = NULL;
	bool full = false;

	HASH_ITER(hh, w->signing, sg, tmp) {
		HASH_DEL(w->signing, sg);
		if (sg->c->cert == cert && !full)
			full = !request_resend(w, sg, now);
		HASH_ADD(hh, again, id, sizeof(sg->id), sg);
	}
	w->signing = again;
}

static int on_chain(void *ctx, struct ipc_msg *m)
{
	struct tls_worker *w = ctx;
	struct ipc_keys_pem p;
	SSL_CTX *next;

	if (!ipc_keys_chain_decode(m->data, m->hdr.len, &p) || (int)p.cert >= w->ncerts) {
		log_error("a malformed certificate chain from the key role; ignored");
		return 0;
	}
	if ((next = ctx_make(w, &p)) == NULL)
		return 0;
	SSL_CTX_free(w->ctx[p.cert]); /* connections hold their own reference */
	w->ctx[p.cert] = next;
	w->key_id[p.cert] = p.key_id;
	requests_resend(w, p.cert);
	return 0;
}

static int on_tickets(void *ctx, struct ipc_msg *m)
{
	struct tls_worker *w = ctx;
	struct ipc_keys_tickets t;

	if (!ipc_keys_tickets_decode(m->data, m->hdr.len, &t)) {
		log_error("malformed session-ticket keys from the key role; ignored");
		return 0;
	}
	OPENSSL_cleanse(&w->tickets, sizeof(w->tickets));
	w->tickets = t;
	OPENSSL_cleanse(&t, sizeof(t));
	return 0;
}

/* The answer for a connection still waiting: its handshake may go on. */
static void answer_take(struct tls_worker *w, struct tls_sign *sg, const struct ipc_keys_fields *a)
{
	HASH_DEL(w->signing, sg);
	sg->id = 0;
	sg->answered = true;
	sg->status = a->len <= sg->sig_cap ? a->status : IPC_KEYS_SIGN_FAILED;
	if (sg->status == IPC_KEYS_OK) {
		memcpy(sg->sig, a->data, a->len);
		sg->sig_len = a->len;
	}
	if (w->resumed != NULL)
		w->resumed(sg->c, w->arg);
}

static int on_signed(void *ctx, struct ipc_msg *m)
{
	struct tls_worker *w = ctx;
	struct ipc_keys_fields a;
	struct tls_sign *sg;

	if (!ipc_keys_signed_decode(m->data, m->hdr.len, &a)) {
		log_error("a malformed signature from the key role; ignored");
		return 0;
	}
	HASH_FIND(hh, w->signing, &a.id, sizeof(a.id), sg);
	if (sg != NULL)              /* else its connection is gone */
		answer_take(w, sg, &a);
	return 0;
}

static const struct ipc_handler from_keys[IPC_TYPE_MAX] = {
	[IPC_KEYS_SIGNED] = { .fn = on_signed, .min_len = sizeof(struct ipc_keys_signed),
			      .max_len = IPC_KEYS_SIGNED_LEN_MAX },
	[IPC_KEYS_CHAIN] = { .fn = on_chain, .min_len = sizeof(struct ipc_keys_chain),
			     .max_len = IPC_MAX_PAYLOAD },
	[IPC_KEYS_TICKETS] = { .fn = on_tickets, IPC_LEN(sizeof(struct ipc_keys_tickets)) },
};

int tls_worker_on_keys(struct tls_worker *w, void (*resumed)(struct tls_conn *c, void *arg),
		       void *arg)
{
	int n;

	w->resumed = resumed;
	w->arg = arg;
	n = ipc_dispatch(w->keys_fd, &w->in, w, KEYS_MSGS_PER_WAKE);
	w->resumed = NULL;
	return n < 0 ? -1 : 0;
}

int tls_worker_preinit(void)
{
	SSL_CTX *probe;

	if (OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL) != 1 || stub_methods_init() < 0) {
		log_error("TLS: cannot initialise OpenSSL");
		return -1;
	}
	/* A context made and dropped: what OpenSSL fetches once (its ciphers, groups) is in. */
	probe = SSL_CTX_new(TLS_server_method());
	SSL_CTX_free(probe);
	return probe != NULL ? 0 : -1;
}

/*
 * The async jobs, once per process: at most 4 x tls.max_pending_signs
 * handshakes wait for a signature; the others find no job (TLS_WANT_JOB)
 * and wait for one. A job holds a 32 KiB stack, kept in the pool once made
 * until tls_worker_tick() empties it.
 */
static bool async_pool_init(const struct iotd_config *cfg)
{
	static bool done;

	if (!done && ASYNC_init_thread((size_t)cfg->tls_max_pending_signs * 4, 0) != 1) {
		log_error("TLS: cannot set up OpenSSL's async jobs");
		return false;
	}
	done = true;
	return true;
}

/*
 * What a burst of handshakes held for a while goes back to the system:
 * the async jobs it made (their 32 KiB stacks), then the free pages of
 * the heap (malloc_trim), where the handshakes' buffers (read-ahead,
 * handshake messages, key shares) were freed between the connections
 * that stayed. Only while no handshake waits for a signature: a paused
 * job would outlive its pool.
 */
static void burst_release(struct tls_worker *w, uint64_t now_ms)
{
	if (HASH_COUNT(w->signing) > 0 || ASYNC_get_current_job() != NULL)
		return;
	if (w->jobs_pooled) {
		ASYNC_cleanup_thread();
		if (ASYNC_init_thread((size_t)w->cfg->tls_max_pending_signs * 4, 0) != 1)
			log_warn("TLS: cannot set up OpenSSL's async jobs again; OpenSSL makes "
				 "them as needed");
		w->jobs_pooled = false;
	}
	malloc_trim(0);
	w->heap_dirty = false;
	w->handshakes_peak = w->handshakes;
	w->released_ms = now_ms;
}

static uint64_t clock_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * A handshake ended (done, failed or dropped). The last one in progress
 * ends a burst: its memory goes back at once when BURST_MIN or more were
 * at once, and no release was BURST_RELEASE_GAP_MS ago or less (a burst
 * whose count touches zero now and then pays for a few trims a second,
 * as the next handshakes find their memory anew). What a trickle held
 * goes at the tick.
 */
static void handshake_ended(struct tls_conn *c)
{
	struct tls_worker *w = c->w;
	uint64_t now_ms;

	if (!c->handshaking)
		return;
	c->handshaking = false;
	w->handshakes--;
	w->heap_dirty = true;
	if (w->handshakes == 0 && w->handshakes_peak >= BURST_MIN &&
	    (now_ms = clock_ms()) - w->released_ms >= BURST_RELEASE_GAP_MS)
		burst_release(w, now_ms);
}

/*
 * Every second: what handshakes ended since the last release left goes,
 * even while others (slow or stalled ones) are in progress.
 */
void tls_worker_tick(struct tls_worker *w)
{
	if (w->heap_dirty)
		burst_release(w, clock_ms());
}

struct tls_worker *tls_worker_new(const struct iotd_config *cfg, unsigned index, int keys_fd)
{
	struct tls_worker *w;

	if (stub_methods_init() < 0 || (w = calloc(1, sizeof(*w))) == NULL)
		return NULL;
	if (!async_pool_init(cfg)) {
		free(w);
		return NULL;
	}
	w->cfg = cfg;
	w->ncerts = config_tls_certs(cfg);
	w->index = index;
	w->keys_fd = keys_fd;
	ipc_dispatcher_init(&w->in, from_keys, index, "the key role");
	/* A key role that started before us sent the chain to our predecessor. */
	if (ipc_send(keys_fd, IPC_KEYS_ASK, index, NULL, 0, -1) < 0)
		log_warn("cannot ask the key role for the certificate chain: %s", strerror(errno));
	return w;
}

void tls_worker_free(struct tls_worker *w)
{
	if (w == NULL)
		return;
	HASH_CLEAR(hh, w->signing);
	for (int i = 0; i < TLS_CERTS_MAX; i++)
		SSL_CTX_free(w->ctx[i]);
	OPENSSL_cleanse(&w->tickets, sizeof(w->tickets));
	free(w);
}

bool tls_worker_serves(const struct tls_worker *w, uint32_t cert)
{
	return cert < (uint32_t)w->ncerts && (cert > 0 || w->cfg->tls_cert_file[0] != '\0');
}

bool tls_worker_ready(const struct tls_worker *w, uint32_t cert)
{
	return cert < (uint32_t)w->ncerts && w->ctx[cert] != NULL;
}

unsigned tls_worker_ready_count(const struct tls_worker *w)
{
	unsigned n = 0;

	for (int i = 0; i < w->ncerts; i++)
		n += w->ctx[i] != NULL;
	return n;
}

/* --- connections --------------------------------------------------------------------- */

struct tls_conn *tls_conn_new(struct tls_worker *w, uint32_t cert, int fd, void *owner)
{
	struct tls_conn *c;

	if (!tls_worker_ready(w, cert) || (c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	c->w = w;
	c->owner = owner;
	c->cert = (uint8_t)cert;
	c->key_id = w->key_id[cert];
	c->ssl = SSL_new(w->ctx[cert]);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
		SSL_free(c->ssl);
		free(c);
		return NULL;
	}
	SSL_set_accept_state(c->ssl);
	c->handshaking = true;
	if (++w->handshakes > w->handshakes_peak)
		w->handshakes_peak = w->handshakes;
	return c;
}

void *tls_conn_owner(const struct tls_conn *c)
{
	return c->owner;
}

/* What an SSL call's result asks for. */
static enum tls_result result_of(struct tls_conn *c, int rc)
{
	int e = SSL_get_error(c->ssl, rc);

	switch (e) {
	case SSL_ERROR_WANT_READ: return TLS_WANT_READ;
	case SSL_ERROR_WANT_WRITE: return TLS_WANT_WRITE;
	case SSL_ERROR_WANT_ASYNC: return TLS_WANT_KEYS;
	case SSL_ERROR_WANT_ASYNC_JOB:
		ERR_clear_error();
		return TLS_WANT_JOB;
	case SSL_ERROR_ZERO_RETURN: return TLS_CLOSED;
	default:
		log_debug("TLS: %s", e == SSL_ERROR_SYSCALL ? strerror(errno) : ssl_reason());
		ERR_clear_error();
		return TLS_ERROR;
	}
}

enum tls_result tls_conn_handshake(struct tls_conn *c)
{
	int rc;

	tls_current = c;
	rc = SSL_do_handshake(c->ssl);
	tls_current = NULL;
	if (rc != 1)
		return result_of(c, rc);
	/* Only a handshake signs: reads and writes need no job from the bounded pool. */
	SSL_clear_mode(c->ssl, SSL_MODE_ASYNC);
	handshake_ended(c);
	return TLS_DONE;
}

enum tls_result tls_conn_read(struct tls_conn *c, void *buf, size_t cap, size_t *n)
{
	enum tls_result r;
	int rc;

	tls_current = c;
	rc = SSL_read_ex(c->ssl, buf, cap, n);
	tls_current = NULL;
	if (rc == 1) {
		c->drained = false;
		return TLS_DONE;
	}
	r = result_of(c, rc);
	c->drained = r == TLS_WANT_READ;
	return r;
}

enum tls_result tls_conn_write(struct tls_conn *c, const void *buf, size_t len, size_t *n)
{
	int rc;

	tls_current = c;
	rc = SSL_write_ex(c->ssl, buf, len, n);
	tls_current = NULL;
	return rc == 1 ? TLS_DONE : result_of(c, rc);
}

const char *tls_conn_alpn(const struct tls_conn *c)
{
	const unsigned char *p;
	unsigned len;

	SSL_get0_alpn_selected(c->ssl, &p, &len);
	return len == 4 && memcmp(p, "mqtt", 4) == 0 ? "mqtt" : NULL;
}

/* An ASN.1 string as UTF-8 into buf, refused with a NUL inside (a name that would read shorter). */
static int name_copy(const ASN1_STRING *s, char *buf, size_t len)
{
	unsigned char *utf8 = NULL;
	int n = ASN1_STRING_to_UTF8(&utf8, s);
	int rc = -1;

	if (n > 0 && (size_t)n < len && memchr(utf8, '\0', (size_t)n) == NULL) {
		memcpy(buf, utf8, (size_t)n);
		buf[n] = '\0';
		rc = n;
	}
	OPENSSL_free(utf8);
	return rc;
}

/* The first DNS or email subject alternative name. */
static int first_san(X509 *x, char *buf, size_t len)
{
	GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	int rc = -1;

	for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names) && rc < 0; i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);

		if (g->type == GEN_DNS || g->type == GEN_EMAIL)
			rc = name_copy(g->d.ia5, buf, len);
	}
	GENERAL_NAMES_free(names);
	return rc;
}

int tls_conn_identity(const struct tls_conn *c, char *buf, size_t len)
{
	X509 *x = SSL_get0_peer_certificate(c->ssl);
	X509_NAME *subject;
	int i;

	if (x == NULL || SSL_get_verify_result(c->ssl) != X509_V_OK)
		return -1;
	subject = X509_get_subject_name(x);
	i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
	if (i >= 0)
		return name_copy(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)), buf, len);
	return first_san(x, buf, len);
}

/*
 * Bytes to read without the socket: decrypted ones, or records read
 * ahead. After a read that wanted the socket, what OpenSSL holds is part
 * of a record, which only the socket can complete.
 */
bool tls_conn_pending(const struct tls_conn *c)
{
	return SSL_pending(c->ssl) > 0 || (!c->drained && SSL_has_pending(c->ssl));
}

bool tls_conn_buffered(const struct tls_conn *c)
{
	return SSL_has_pending(c->ssl);
}

void tls_conn_close_notify(struct tls_conn *c)
{
	if (SSL_is_init_finished(c->ssl) && !(SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN))
		(void)SSL_shutdown(c->ssl);
	ERR_clear_error();
}

void tls_conn_free(struct tls_conn *c)
{
	if (c == NULL)
		return;
	/* A handshake paused for a signature ends, failed, before its SSL goes. */
	if (c->sign != NULL && c->sign->id != 0) {
		HASH_DEL(c->w->signing, c->sign);
		c->sign->id = 0;
	}
	if (c->sign != NULL && SSL_waiting_for_async(c->ssl)) {
		c->sign->answered = true;
		c->sign->status = IPC_KEYS_SIGN_FAILED;
		tls_conn_handshake(c);
	}
	SSL_free(c->ssl);
	handshake_ended(c);
	free(c);
}
