/*
 * nlm_libnfs: an independent NLM version 4 client for latchd, written
 * against Debian's libnfs (libnfs-dev) and nothing of Latch's.
 *
 *   nlm_libnfs SERVER_IP NLM_PORT
 *
 * The calls go over TCP: libnfs's public API offers NLM4 client calls on
 * connected (TCP) contexts only; its UDP client functions are not in the
 * installed headers.
 *
 * The GRANTED callback is received by libnfs too: a UDP server context
 * (rpc_init_server_context + rpc_register_service) serves NLM4 NULL and
 * GRANTED, and this program registers it with the local rpcbind
 * (PMAP2 SET over TCP to 127.0.0.1:111, from a reserved port as root), where
 * the lock server looks for it. Run it on a host whose rpcbind has no NLM
 * registered yet.
 *
 * One line per step on stdout; on the first wrong answer, a message on
 * stderr and exit status 1.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nlm.h>

#define CALLER "client"
#define FH "latch-interop-fh"
#define WAIT_SECONDS 10

static struct rpc_context *cli;  /* TCP to the lock server */
static struct rpc_context *pmap; /* TCP to the local rpcbind */
static struct rpc_context *cb;   /* UDP server for the GRANTED callback */

static void fail(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "FAIL: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(1);
}

/* What a call's callback saw, copied out of libnfs's buffers. */
struct answer {
	int done;
	int status;           /* RPC_STATUS_* */
	char error[256];
	int stat;             /* nlmstat4, or the PMAP SET result */
	char cookie[64];
	nlm4_holder holder;   /* TEST denied; oh points to holder_oh */
	char holder_oh[64];
};

/* A GRANTED callback as received. */
static struct {
	int count;
	uint32_t exclusive;
	uint32_t svid;
	uint64_t offset, len;
	char fh[64];
	char oh[64];
	char caller[256];
} granted;

static void copy_cookie(struct answer *a, nlm_cookie *c)
{
	size_t n = c->data.data_len < sizeof(a->cookie) - 1 ?
		c->data.data_len : sizeof(a->cookie) - 1;

	memcpy(a->cookie, c->data.data_val, n);
	a->cookie[n] = 0;
}

static struct answer *begin(struct answer *a, int status, void *data)
{
	a->done = 1;
	a->status = status;
	if (status != RPC_STATUS_SUCCESS) {
		snprintf(a->error, sizeof(a->error), "%s",
			 data ? (char *)data : "cancelled");
		return NULL;
	}
	return a;
}

static void on_connect(struct rpc_context *rpc, int status, void *data,
		       void *priv)
{
	(void)rpc;
	begin(priv, status, data);
}

static void on_null(struct rpc_context *rpc, int status, void *data,
		    void *priv)
{
	(void)rpc;
	begin(priv, status, data);
}

static void on_pmap_set(struct rpc_context *rpc, int status, void *data,
			void *priv)
{
	struct answer *a = begin(priv, status, data);

	(void)rpc;
	if (a)
		a->stat = (int)*(uint32_t *)data;
}

static void on_test(struct rpc_context *rpc, int status, void *data,
		    void *priv)
{
	struct answer *a = begin(priv, status, data);
	NLM4_TESTres *r = data;

	(void)rpc;
	if (!a)
		return;
	copy_cookie(a, &r->cookie);
	a->stat = r->reply.status;
	if (r->reply.status == NLM4_DENIED) {
		a->holder = r->reply.nlm4_testreply_u.lock.holder;
		snprintf(a->holder_oh, sizeof(a->holder_oh), "%s",
			 a->holder.oh ? a->holder.oh : "");
		a->holder.oh = a->holder_oh;
	}
}

/* LOCK, UNLOCK and CANCEL answer the same shape: cookie and status. */
static void on_lock(struct rpc_context *rpc, int status, void *data,
		    void *priv)
{
	struct answer *a = begin(priv, status, data);
	NLM4_LOCKres *r = data;

	(void)rpc;
	if (a) {
		copy_cookie(a, &r->cookie);
		a->stat = r->status;
	}
}

static void on_unlock(struct rpc_context *rpc, int status, void *data,
		      void *priv)
{
	struct answer *a = begin(priv, status, data);
	NLM4_UNLOCKres *r = data;

	(void)rpc;
	if (a) {
		copy_cookie(a, &r->cookie);
		a->stat = r->status;
	}
}

static void on_cancel(struct rpc_context *rpc, int status, void *data,
		      void *priv)
{
	struct answer *a = begin(priv, status, data);
	NLM4_CANCres *r = data;

	(void)rpc;
	if (a) {
		copy_cookie(a, &r->cookie);
		a->stat = r->status;
	}
}

/* Callback service: NLM4 NULL and GRANTED. */
static int serve_null(struct rpc_context *rpc, struct rpc_msg *call)
{
	return rpc_send_reply(rpc, call, NULL, (zdrproc_t)zdr_void, 0);
}

/*
 * libnfs 4.0 decodes a call's arguments into a buffer it does not clear, and
 * its opaque decoder copies into any non-NULL pointer found there: with a
 * decode_buf_size the GRANTED arguments crash it. So the service entry has
 * no buffer and this decoder fills a cleared one of ours.
 */
static NLM4_GRANTEDargs granted_args;

static uint32_t decode_granted(ZDR *zdr, void *unused, ...)
{
	(void)unused;
	memset(&granted_args, 0, sizeof(granted_args));
	return zdr_NLM4_GRANTEDargs(zdr, &granted_args);
}

static int serve_granted(struct rpc_context *rpc, struct rpc_msg *call)
{
	NLM4_GRANTEDargs *a = &granted_args;
	NLM4_GRANTEDres res;

	granted.count++;
	granted.exclusive = a->exclusive;
	granted.svid = a->lock.svid;
	granted.offset = a->lock.l_offset;
	granted.len = a->lock.l_len;
	snprintf(granted.fh, sizeof(granted.fh), "%.*s",
		 (int)a->lock.fh.data.data_len, a->lock.fh.data.data_val);
	snprintf(granted.oh, sizeof(granted.oh), "%s",
		 a->lock.oh ? a->lock.oh : "");
	snprintf(granted.caller, sizeof(granted.caller), "%s",
		 a->lock.caller_name ? a->lock.caller_name : "");
	/* The answer echoes the server's cookie. */
	res.cookie = a->cookie;
	res.status = NLM4_GRANTED;
	return rpc_send_reply(rpc, call, &res, (zdrproc_t)zdr_NLM4_GRANTEDres,
			      sizeof(res));
}

static struct service_proc nlm4_procs[] = {
	{ NLM4_NULL, serve_null, (zdrproc_t)zdr_void, 0 },
	{ NLM4_GRANT, serve_granted, decode_granted, 0 },
};

/*
 * Services every context until *flag becomes non-zero, for at most
 * WAIT_SECONDS.
 */
static void wait_for(const int *flag, const char *what)
{
	struct rpc_context *ctx[3] = { cli, pmap, cb };
	time_t deadline = time(NULL) + WAIT_SECONDS;

	while (!*flag) {
		struct pollfd pfd[3];
		int i, n = 0, map[3];

		if (time(NULL) > deadline)
			fail("%s: no answer within %d s", what, WAIT_SECONDS);
		for (i = 0; i < 3; i++) {
			if (!ctx[i] || rpc_get_fd(ctx[i]) < 0)
				continue;
			pfd[n].fd = rpc_get_fd(ctx[i]);
			pfd[n].events = rpc_which_events(ctx[i]);
			pfd[n].revents = 0;
			map[n++] = i;
		}
		if (poll(pfd, n, 100) < 0 && errno != EINTR)
			fail("poll: %s", strerror(errno));
		for (i = 0; i < n; i++) {
			struct rpc_context *c = ctx[map[i]];

			/* revents 0 still runs libnfs's timeouts. */
			if (rpc_service(c, pfd[i].revents) < 0)
				fail("%s: %s", what, rpc_get_error(c));
		}
	}
}

static void expect_rpc_ok(struct answer *a, const char *what)
{
	wait_for(&a->done, what);
	if (a->status != RPC_STATUS_SUCCESS)
		fail("%s: RPC failed: %s", what, a->error);
}

static void expect_stat(struct answer *a, const char *what, int want,
			const char *cookie)
{
	expect_rpc_ok(a, what);
	if (a->stat != want)
		fail("%s: got %s, want %s", what, nlmstat4_to_str(a->stat),
		     nlmstat4_to_str(want));
	if (strcmp(a->cookie, cookie) != 0)
		fail("%s: cookie \"%s\" not echoed (got \"%s\")", what, cookie,
		     a->cookie);
	printf("ok  %-44s %s\n", what, nlmstat4_to_str(a->stat));
	fflush(stdout);
}

static void set_lock(nlm4_lock *l, const char *oh, uint32_t svid,
		     uint64_t offset, uint64_t len)
{
	l->caller_name = CALLER;
	l->fh.data.data_len = strlen(FH);
	l->fh.data.data_val = FH;
	l->oh = (char *)oh;
	l->svid = svid;
	l->l_offset = offset;
	l->l_len = len;
}

static void set_cookie(nlm_cookie *c, const char *text)
{
	c->data.data_len = strlen(text);
	c->data.data_val = (char *)text;
}

static void test(const char *what, const char *oh, uint32_t svid,
		 uint64_t offset, uint64_t len, int want, struct answer *a)
{
	NLM4_TESTargs t;

	memset(a, 0, sizeof(*a));
	set_cookie(&t.cookie, "test");
	t.exclusive = 1;
	set_lock(&t.lock, oh, svid, offset, len);
	if (rpc_nlm4_test_async(cli, on_test, &t, a) != 0)
		fail("%s: %s", what, rpc_get_error(cli));
	expect_stat(a, what, want, "test");
}

static void lock(const char *what, const char *oh, uint32_t svid,
		 uint64_t offset, uint64_t len, int block, int want)
{
	struct answer a = { 0 };
	NLM4_LOCKargs l;

	set_cookie(&l.cookie, "lock");
	l.block = block;
	l.exclusive = 1;
	set_lock(&l.lock, oh, svid, offset, len);
	l.reclaim = 0;
	l.state = 1;
	if (rpc_nlm4_lock_async(cli, on_lock, &l, &a) != 0)
		fail("%s: %s", what, rpc_get_error(cli));
	expect_stat(&a, what, want, "lock");
}

static void unlock(const char *what, const char *oh, uint32_t svid,
		   uint64_t offset, uint64_t len)
{
	struct answer a = { 0 };
	NLM4_UNLOCKargs u;

	set_cookie(&u.cookie, "unlock");
	set_lock(&u.lock, oh, svid, offset, len);
	if (rpc_nlm4_unlock_async(cli, on_unlock, &u, &a) != 0)
		fail("%s: %s", what, rpc_get_error(cli));
	expect_stat(&a, what, NLM4_GRANTED, "unlock");
}

static void check_holder(const char *what, struct answer *a, const char *oh,
			 uint32_t svid, uint64_t offset, uint64_t len)
{
	nlm4_holder *h = &a->holder;

	if (!h->exclusive || h->svid != svid || h->l_offset != offset ||
	    h->l_len != len || strcmp(h->oh, oh) != 0)
		fail("%s: holder exclusive=%u svid=%u offset=%llu len=%llu "
		     "oh=\"%s\", want exclusive=1 svid=%u offset=%llu len=%llu "
		     "oh=\"%s\"", what, h->exclusive, h->svid,
		     (unsigned long long)h->l_offset,
		     (unsigned long long)h->l_len, h->oh, svid,
		     (unsigned long long)offset, (unsigned long long)len, oh);
	printf("ok  %-44s holder svid=%u offset=%llu len=%llu oh=%s\n", what,
	       h->svid, (unsigned long long)h->l_offset,
	       (unsigned long long)h->l_len, h->oh);
}

int main(int argc, char **argv)
{
	struct sockaddr_in sin = { 0 };
	socklen_t slen = sizeof(sin);
	struct answer a = { 0 };
	NLM4_CANCargs c;
	int s, cb_port, port;

	if (argc != 3)
		fail("usage: %s SERVER_IP NLM_PORT", argv[0]);
	port = atoi(argv[2]);
	setvbuf(stdout, NULL, _IOLBF, 0);

	/* The callback endpoint: UDP, any port, served by libnfs. */
	s = socket(AF_INET, SOCK_DGRAM, 0);
	sin.sin_family = AF_INET;
	if (s < 0 || bind(s, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    getsockname(s, (struct sockaddr *)&sin, &slen) < 0)
		fail("callback socket: %s", strerror(errno));
	cb_port = ntohs(sin.sin_port);
	cb = rpc_init_server_context(s);
	if (!cb || rpc_register_service(cb, NLM_PROGRAM, NLM_V4, nlm4_procs,
					sizeof(nlm4_procs) /
					sizeof(nlm4_procs[0])) != 0)
		fail("callback service: cannot register");

	pmap = rpc_init_context();
	if (!pmap || rpc_connect_async(pmap, "127.0.0.1", 111, on_connect, &a))
		fail("rpcbind: cannot connect");
	expect_rpc_ok(&a, "connect to the local rpcbind");
	memset(&a, 0, sizeof(a));
	if (rpc_pmap2_set_async(pmap, NLM_PROGRAM, NLM_V4, IPPROTO_UDP, cb_port,
				on_pmap_set, &a) != 0)
		fail("PMAP2 SET: %s", rpc_get_error(pmap));
	expect_rpc_ok(&a, "PMAP2 SET");
	if (a.stat != 1)
		fail("rpcbind refused to register NLM v4 on UDP port %d",
		     cb_port);
	printf("ok  %-44s udp port %d\n", "callback service registered",
	       cb_port);

	cli = rpc_init_context();
	memset(&a, 0, sizeof(a));
	if (!cli || rpc_connect_port_async(cli, argv[1], port, NLM_PROGRAM,
					   NLM_V4, on_connect, &a) != 0)
		fail("connect to %s:%d: %s", argv[1], port,
		     cli ? rpc_get_error(cli) : "no context");
	expect_rpc_ok(&a, "connect over TCP");
	printf("ok  %-44s %s:%d\n", "connected over TCP", argv[1], port);

	memset(&a, 0, sizeof(a));
	if (rpc_nlm4_null_async(cli, on_null, &a) != 0)
		fail("NULL: %s", rpc_get_error(cli));
	expect_rpc_ok(&a, "NULL");
	printf("ok  %-44s\n", "NULL");

	/* Owner A (svid 101) takes [0, 100); owner B (svid 202) wants [50, 150). */
	test("TEST A [0,100) on a free file", "owner-a", 101, 0, 100,
	     NLM4_GRANTED, &a);
	lock("LOCK A [0,100) exclusive", "owner-a", 101, 0, 100, 0,
	     NLM4_GRANTED);
	test("TEST B [50,150) against A", "owner-b", 202, 50, 100,
	     NLM4_DENIED, &a);
	check_holder("TEST B: the holder is A", &a, "owner-a", 101, 0, 100);
	lock("LOCK B [50,150) non-blocking", "owner-b", 202, 50, 100, 0,
	     NLM4_DENIED);
	lock("LOCK B [50,150) blocking", "owner-b", 202, 50, 100, 1,
	     NLM4_BLOCKED);
	if (granted.count != 0)
		fail("GRANTED arrived while A still held the lock");
	unlock("UNLOCK A [0,100)", "owner-a", 101, 0, 100);

	wait_for(&granted.count, "GRANTED callback for B");
	if (granted.exclusive != 1 || granted.svid != 202 ||
	    granted.offset != 50 || granted.len != 100 ||
	    strcmp(granted.fh, FH) != 0 || strcmp(granted.oh, "owner-b") != 0)
		fail("GRANTED callback: exclusive=%u svid=%u offset=%llu "
		     "len=%llu fh=\"%s\" oh=\"%s\", want B's blocked request",
		     granted.exclusive, granted.svid,
		     (unsigned long long)granted.offset,
		     (unsigned long long)granted.len, granted.fh, granted.oh);
	printf("ok  %-44s svid=%u offset=%llu len=%llu caller=%s, answered "
	       "granted\n", "GRANTED callback for B", granted.svid,
	       (unsigned long long)granted.offset,
	       (unsigned long long)granted.len, granted.caller);

	test("TEST A [0,100) against B's granted lock", "owner-a", 101, 0,
	     100, NLM4_DENIED, &a);
	check_holder("TEST A: the holder is B", &a, "owner-b", 202, 50, 100);

	memset(&a, 0, sizeof(a));
	set_cookie(&c.cookie, "cancel");
	c.block = 1;
	c.exclusive = 1;
	set_lock(&c.lock, "owner-c", 303, 1000, 10);
	if (rpc_nlm4_cancel_async(cli, on_cancel, &c, &a) != 0)
		fail("CANCEL: %s", rpc_get_error(cli));
	expect_stat(&a, "CANCEL of a request nobody made", NLM4_GRANTED,
		    "cancel");

	unlock("UNLOCK B [50,150)", "owner-b", 202, 50, 100);
	test("TEST A [0,100): the file is free again", "owner-a", 101, 0, 100,
	     NLM4_GRANTED, &a);
	if (granted.count != 1)
		fail("GRANTED arrived %d times, want once", granted.count);

	rpc_destroy_context(cli);
	rpc_destroy_context(pmap);
	/* Not cb: libnfs 4.0 crashes destroying a server context. */
	printf("PASS\n");
	return 0;
}
