/* The STARTTLS engine: capability editing, STARTTLS answered by the proxy, pipelined bytes
 * left for the caller to drop, required-mode refusals, blind mode, bounded lines — and every
 * dialogue fed again split at every byte offset, which must change nothing. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "proxy/mail/starttls.h"

struct out {
    char client[65536], backend[65536];
    size_t nc, nb;
};

static int to_client(void *ctx, const char *d, size_t n)
{
    struct out *o = ctx;
    if (o->nc + n >= sizeof o->client)
        return -1;
    memcpy(o->client + o->nc, d, n);
    o->nc += n;
    o->client[o->nc] = 0;
    return 0;
}

static int to_backend(void *ctx, const char *d, size_t n)
{
    struct out *o = ctx;
    if (o->nb + n >= sizeof o->backend)
        return -1;
    memcpy(o->backend + o->nb, d, n);
    o->nb += n;
    o->backend[o->nb] = 0;
    return 0;
}

/* What the connection code does: keep unconsumed bytes, append new ones, call the engine.
 * Returns the last event; *LEFT gets the bytes the engine did not consume at that event. */
struct side {
    char buf[1 << 16];
    size_t len;
};

static enum st_event feed(struct st_session *s, bool client, struct side *pending, const char *data,
                          size_t len, struct out *o, size_t *left)
{
    struct st_sink sink = { o, to_client, to_backend };
    memcpy(pending->buf + pending->len, data, len);
    pending->len += len;
    size_t used = 0;
    enum st_event ev = client ? st_client_input(s, pending->buf, pending->len, &used, &sink)
                              : st_backend_input(s, pending->buf, pending->len, &used, &sink);
    memmove(pending->buf, pending->buf + used, pending->len - used);
    pending->len -= used;
    if (left)
        *left = pending->len;
    return ev;
}

/* Runs a dialogue of alternating backend/client blobs, each split at SPLIT (0 = whole).
 * Returns the event of the last client blob. */
struct step {
    bool client;
    const char *data;
};

/* Runs the dialogue the way the connection code does: after ST_BLIND the session keeps
 * carrying both sides (its blind client side forwards bytes unread); after ST_STARTTLS the
 * client's further bytes are the caller's to drop, while the backend's responses still come;
 * the STARTTLS answer is sent once the session says it is its turn. Returns ST_BLIND when the
 * client went blind on the way and nothing ended the dialogue. */
static enum st_event run(enum conf_proto proto, enum st_mode mode, const struct step *steps,
                         size_t n, size_t split, struct out *o, size_t *left)
{
    memset(o, 0, sizeof *o);
    struct st_session *s = st_new(proto, mode);
    static struct side cs, bs;
    cs.len = bs.len = 0;
    enum st_event ev = ST_MORE;
    bool blind = false, asked = false, answered = false;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(steps[i].data);
        struct side *p = steps[i].client ? &cs : &bs;
        if (asked && steps[i].client)
            continue;
        size_t cut = split && split < len ? split : len;
        ev = feed(s, steps[i].client, p, steps[i].data, cut, o, left);
        blind = blind || ev == ST_BLIND;
        if (ev == ST_BLIND)
            ev = ST_MORE;
        if (cut < len && ev == ST_MORE) {
            ev = feed(s, steps[i].client, p, steps[i].data + cut, len - cut, o, left);
            blind = blind || ev == ST_BLIND;
            if (ev == ST_BLIND)
                ev = ST_MORE;
        } else if (cut < len) {
            *left += len - cut; /* bytes that arrive after the event are the caller's too */
        }
        asked = asked || ev == ST_STARTTLS;
        if (asked && !answered && st_starttls_ready(s)) {
            to_client(o, st_starttls_reply(s), strlen(st_starttls_reply(s)));
            answered = true;
        }
        if (ev == ST_CLOSE)
            break;
    }
    st_free(s);
    if (asked)
        return ST_STARTTLS;
    return blind && ev == ST_MORE ? ST_BLIND : ev;
}

/* Checks that the dialogue gives WANT_CLIENT / WANT_BACKEND / WANT_EV / WANT_LEFT whole and at
 * every split offset. */
static void expect(enum conf_proto proto, enum st_mode mode, const struct step *steps, size_t n,
                   const char *want_client, const char *want_backend, enum st_event want_ev,
                   size_t want_left)
{
    size_t longest = 0;
    for (size_t i = 0; i < n; i++)
        if (strlen(steps[i].data) > longest)
            longest = strlen(steps[i].data);
    static struct out o;
    int failures_before = check_failures;
    for (size_t split = 0; split <= longest; split++) {
        size_t left = 0;
        enum st_event ev = run(proto, mode, steps, n, split, &o, &left);
        CHECK_STR(o.client, want_client);
        CHECK_STR(o.backend, want_backend);
        CHECK(ev == want_ev);
        CHECK(left == want_left);
        if (check_failures != failures_before) {
            fprintf(stderr, "  (split at %zu)\n", split);
            return;
        }
    }
}

#define N(a) (sizeof(a) / sizeof *(a))

static void imap(void)
{
    const struct step greet_cap[] = {
        { false, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] Dovecot ready.\r\n" },
        { true, "a1 CAPABILITY\r\n" },
        { false, "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN\r\na1 OK Pre-login capabilities listed.\r\n" },
        { true, "a2 STARTTLS\r\na3 NOOP\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_OPTIONAL, greet_cap, N(greet_cap),
           "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN STARTTLS] Dovecot ready.\r\n"
           "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN STARTTLS\r\na1 OK Pre-login capabilities listed.\r\n"
           "a2 OK Begin TLS negotiation now\r\n",
           "a1 CAPABILITY\r\n", ST_STARTTLS, strlen("a3 NOOP\r\n"));

    /* Required: LOGINDISABLED advertised, LOGIN refused by the proxy and never forwarded. */
    const struct step required[] = {
        { false, "* OK [CAPABILITY IMAP4rev1] ready\r\n" },
        { true, "x LOGIN alice secret\r\ny AUTHENTICATE PLAIN\r\nz SELECT INBOX\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_REQUIRED, required, N(required),
           "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n"
           "x NO [PRIVACYREQUIRED] TLS is required: use STARTTLS first\r\n"
           "y NO [PRIVACYREQUIRED] TLS is required: use STARTTLS first\r\n"
           "z NO [PRIVACYREQUIRED] TLS is required: use STARTTLS first\r\n",
           "", ST_MORE, 0);

    /* Optional: a plaintext LOGIN goes to the backend and the session goes blind. */
    const struct step optional[] = {
        { false, "* OK ready\r\n" },
        { true, "x LOGIN alice secret\r\ny SELECT INBOX\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_OPTIONAL, optional, N(optional), "* OK ready\r\n",
           "x LOGIN alice secret\r\ny SELECT INBOX\r\n", ST_BLIND, 0);

    /* The STARTTLS answer waits for the response to a command pipelined before it. */
    const struct step ordered[] = {
        { false, "* OK ready\r\n" },
        { true, "a NOOP\r\nb STARTTLS\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_OPTIONAL, ordered, N(ordered), "* OK ready\r\n", "a NOOP\r\n",
           ST_STARTTLS, 0);

    /* A line that never ends is refused once it reaches the limit, not buffered. */
    static char huge[ST_LINE_MAX + 100];
    memset(huge, 'A', sizeof huge - 1);
    const struct step flood[] = { { false, "* OK ready\r\n" }, { true, huge } };
    size_t left = 0;
    static struct out o;
    CHECK(run(CONF_PROTO_IMAP, ST_OPTIONAL, flood, N(flood), 0, &o, &left) == ST_CLOSE);
    CHECK(strstr(o.client, "* BYE Command line too long") != NULL);
    CHECK(o.nb == 0);

    /* A client that keeps a plaintext session busy is closed after the pre-TLS command cap. */
    {
        static char many[80 * 8 + 1];
        for (int i = 0; i < 80; i++)
            memcpy(many + i * 8, "a NOOP\r\n", 8);
        const struct step busy[] = { { false, "* OK ready\r\n" }, { true, many } };
        left = 0;
        CHECK(run(CONF_PROTO_IMAP, ST_OPTIONAL, busy, N(busy), 0, &o, &left) == ST_CLOSE);
        CHECK(strstr(o.client, "* BYE Too many commands") != NULL);
    }

    /* STARTTLS with arguments is a syntax error; literals make a command not harmless. */
    const struct step args[] = { { false, "* OK ready\r\n" }, { true, "t STARTTLS now\r\n" } };
    expect(CONF_PROTO_IMAP, ST_REQUIRED, args, N(args),
           "* OK ready\r\nt BAD STARTTLS takes no arguments\r\n", "", ST_MORE, 0);
    const struct step literal[] = { { false, "* OK ready\r\n" }, { true, "t ID {5}\r\n" } };
    expect(CONF_PROTO_IMAP, ST_REQUIRED, literal, N(literal),
           "* OK ready\r\nt NO [PRIVACYREQUIRED] TLS is required: use STARTTLS first\r\n", "", ST_MORE, 0);
}

static void pop3(void)
{
    const struct step capa[] = {
        { false, "+OK Dovecot ready.\r\n" },
        { true, "CAPA\r\n" },
        { false, "+OK\r\nCAPA\r\nTOP\r\nUSER\r\n.\r\n" },
        { true, "STLS\r\nUSER alice\r\n" },
    };
    expect(CONF_PROTO_POP3, ST_OPTIONAL, capa, N(capa),
           "+OK Dovecot ready.\r\n+OK\r\nCAPA\r\nTOP\r\nUSER\r\nSTLS\r\n.\r\n+OK Begin TLS negotiation\r\n",
           "CAPA\r\n", ST_STARTTLS, strlen("USER alice\r\n"));
    const struct step has_stls[] = {
        { false, "+OK ready\r\n" }, { true, "CAPA\r\n" }, { false, "+OK\r\nSTLS\r\n.\r\n" },
    };
    expect(CONF_PROTO_POP3, ST_OPTIONAL, has_stls, N(has_stls), "+OK ready\r\n+OK\r\nSTLS\r\n.\r\n",
           "CAPA\r\n", ST_MORE, 0);
    const struct step required[] = {
        { false, "+OK ready\r\n" }, { true, "USER alice\r\nPASS secret\r\nLIST\r\nNOOP\r\n" },
    };
    expect(CONF_PROTO_POP3, ST_REQUIRED, required, N(required),
           "+OK ready\r\n-ERR [AUTH] TLS is required: use STLS first\r\n"
           "-ERR [AUTH] TLS is required: use STLS first\r\n-ERR TLS is required: use STLS first\r\n",
           "NOOP\r\n", ST_MORE, 0);
}

static void smtp(void)
{
    const struct step ehlo[] = {
        { false, "220-mx.hoster.test ESMTP\r\n220 Postfix\r\n" },
        { true, "EHLO client.example\r\n" },
        { false, "250-mx.hoster.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n" },
        { true, "STARTTLS\r\nMAIL FROM:<evil@example>\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_OPTIONAL, ehlo, N(ehlo),
           "220-mx.hoster.test ESMTP\r\n220 Postfix\r\n"
           "250-mx.hoster.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
           "220 2.0.0 Ready to start TLS\r\n",
           "EHLO client.example\r\n", ST_STARTTLS, strlen("MAIL FROM:<evil@example>\r\n"));
    const struct step one_line[] = {
        { false, "220 mx ESMTP\r\n" }, { true, "EHLO c\r\n" }, { false, "250 mx\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_OPTIONAL, one_line, N(one_line),
           "220 mx ESMTP\r\n250-mx\r\n250 STARTTLS\r\n", "EHLO c\r\n", ST_MORE, 0);
    const struct step required[] = {
        { false, "220 mx ESMTP\r\n" }, { true, "MAIL FROM:<a@b>\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nNOOP\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_REQUIRED, required, N(required),
           "220 mx ESMTP\r\n530 5.7.0 Must issue a STARTTLS command first\r\n"
           "530 5.7.0 Must issue a STARTTLS command first\r\n",
           "NOOP\r\n", ST_MORE, 0);
    /* Port 25, optional, an MTA that never says STARTTLS: the first MAIL goes blind. */
    const struct step mta[] = {
        { false, "220 mx ESMTP\r\n" }, { true, "HELO relay\r\n" }, { false, "250 mx\r\n" },
        { true, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_OPTIONAL, mta, N(mta), "220 mx ESMTP\r\n250 mx\r\n",
           "HELO relay\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", ST_BLIND, 0);
    const struct step args[] = { { false, "220 mx\r\n" }, { true, "STARTTLS x\r\n" } };
    expect(CONF_PROTO_SMTP, ST_OPTIONAL, args, N(args),
           "220 mx\r\n501 5.5.4 Syntax error (no parameters allowed)\r\n", "", ST_MORE, 0);
}

/* After STARTTLS the fresh backend session must not offer STARTTLS again, and a second
 * STARTTLS is refused by the proxy, never forwarded. */
static void after_starttls(void)
{
    const struct step imap[] = {
        { true, "a CAPABILITY\r\n" },
        { false, "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\na OK [CAPABILITY IMAP4rev1 STARTTLS] done\r\n" },
        { true, "b STARTTLS\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_AFTER_STARTTLS, imap, N(imap),
           "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na OK [CAPABILITY IMAP4rev1] done\r\n"
           "b BAD TLS is already active\r\n",
           "a CAPABILITY\r\n", ST_MORE, 0);
    const struct step pop3[] = {
        { true, "CAPA\r\n" }, { false, "+OK\r\nUSER\r\nSTLS\r\n.\r\n" }, { true, "STLS\r\n" },
    };
    expect(CONF_PROTO_POP3, ST_AFTER_STARTTLS, pop3, N(pop3),
           "+OK\r\nUSER\r\n.\r\n-ERR TLS is already active\r\n", "CAPA\r\n", ST_MORE, 0);
    const struct step smtp_last[] = {
        { true, "EHLO c\r\n" }, { false, "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_AFTER_STARTTLS, smtp_last, N(smtp_last), "250-mx\r\n250 PIPELINING\r\n",
           "EHLO c\r\n", ST_MORE, 0);
    const struct step smtp_mid[] = {
        { true, "EHLO c\r\n" }, { false, "250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n" },
        { true, "STARTTLS\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_AFTER_STARTTLS, smtp_mid, N(smtp_mid),
           "250-mx\r\n250 8BITMIME\r\n554 5.5.1 Error: TLS already active\r\n", "EHLO c\r\n",
           ST_MORE, 0);
}

/* Required listeners before TLS offer no login (issue 13, item 3): SMTP AUTH (both forms),
 * IMAP AUTH= mechanisms (LOGINDISABLED kept or added) and POP3 USER/SASL leave the lists. */
static void login_hidden(void)
{
    const struct step imap[] = {
        { false, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN auth=login ID] Dovecot ready.\r\n" },
        { true, "a CAPABILITY\r\n" },
        { false, "* CAPABILITY IMAP4rev1 AUTH=PLAIN LOGINDISABLED\r\na OK [CAPABILITY AUTH=PLAIN] done\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_REQUIRED, imap, N(imap),
           "* OK [CAPABILITY IMAP4rev1 SASL-IR ID STARTTLS LOGINDISABLED] Dovecot ready.\r\n"
           "* CAPABILITY IMAP4rev1 LOGINDISABLED STARTTLS\r\n"
           "a OK [CAPABILITY STARTTLS LOGINDISABLED] done\r\n",
           "a CAPABILITY\r\n", ST_MORE, 0);
    const struct step smtp[] = {
        { false, "220 mx ESMTP\r\n" },
        { true, "EHLO c\r\n" },
        { false, "250-mx\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250 8BITMIME\r\n" },
        { true, "EHLO c\r\n" },
        { false, "250-mx\r\n250-SIZE 1000\r\n250 AUTH PLAIN\r\n" },
        { true, "EHLO c\r\n" },
        { false, "250-mx\r\n250-STARTTLS\r\n250 auth=plain\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_REQUIRED, smtp, N(smtp),
           "220 mx ESMTP\r\n"
           "250-mx\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
           "250-mx\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"
           "250-mx\r\n250 STARTTLS\r\n",
           "EHLO c\r\nEHLO c\r\nEHLO c\r\n", ST_MORE, 0);
    const struct step pop3[] = {
        { false, "+OK ready\r\n" },
        { true, "CAPA\r\n" },
        { false, "+OK\r\nCAPA\r\nUSER\r\nSASL PLAIN LOGIN\r\nTOP\r\n.\r\n" },
    };
    expect(CONF_PROTO_POP3, ST_REQUIRED, pop3, N(pop3),
           "+OK ready\r\n+OK\r\nCAPA\r\nTOP\r\nSTLS\r\n.\r\n", "CAPA\r\n", ST_MORE, 0);
    /* Optional listeners and the session after STARTTLS keep them. */
    expect(CONF_PROTO_POP3, ST_OPTIONAL, pop3, N(pop3),
           "+OK ready\r\n+OK\r\nCAPA\r\nUSER\r\nSASL PLAIN LOGIN\r\nTOP\r\nSTLS\r\n.\r\n", "CAPA\r\n",
           ST_MORE, 0);
    const struct step after[] = {
        { true, "EHLO c\r\n" }, { false, "250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_AFTER_STARTTLS, after, N(after), "250-mx\r\n250 AUTH PLAIN\r\n",
           "EHLO c\r\n", ST_MORE, 0);
}

/* Implicit-TLS listeners (item 4): the greeting is relayed with the backend's STARTTLS taken
 * out, and STARTTLS/STLS is answered by the proxy, never forwarded. */
static void implicit(void)
{
    const struct step imap[] = {
        { false, "* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Dovecot ready.\r\n" },
        { true, "a CAPABILITY\r\nb STARTTLS\r\n" },
        { false, "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\na OK done\r\n" },
        { true, "c LOGIN alice secret\r\n" },
        { false, "c OK [CAPABILITY IMAP4rev1 STARTTLS] Logged in\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_IMPLICIT, imap, N(imap),
           "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready.\r\n"
           "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na OK done\r\nb BAD TLS is already active\r\n"
           "c OK [CAPABILITY IMAP4rev1 STARTTLS] Logged in\r\n",
           "a CAPABILITY\r\nc LOGIN alice secret\r\n", ST_BLIND, 0);
    const struct step pop3[] = {
        { false, "+OK Dovecot ready.\r\n" }, { true, "CAPA\r\n" },
        { false, "+OK\r\nSTLS\r\nUSER\r\n.\r\n" }, { true, "STLS\r\n" },
    };
    expect(CONF_PROTO_POP3, ST_IMPLICIT, pop3, N(pop3),
           "+OK Dovecot ready.\r\n+OK\r\nUSER\r\n.\r\n-ERR TLS is already active\r\n", "CAPA\r\n",
           ST_MORE, 0);
    const struct step smtp[] = {
        { false, "220 mx ESMTP\r\n" }, { true, "EHLO c\r\n" },
        { false, "250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n" }, { true, "STARTTLS\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_IMPLICIT, smtp, N(smtp),
           "220 mx ESMTP\r\n250-mx\r\n250 AUTH PLAIN\r\n554 5.5.1 Error: TLS already active\r\n",
           "EHLO c\r\n", ST_MORE, 0);
}

/* A refusal waits for the responses to the commands sent before it (item 13). */
static void refusals_in_order(void)
{
    const struct step smtp[] = {
        { false, "220 mx\r\n" }, { true, "NOOP\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\n" },
        { false, "250 2.0.0 Ok\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_REQUIRED, smtp, N(smtp),
           "220 mx\r\n250 2.0.0 Ok\r\n530 5.7.0 Must issue a STARTTLS command first\r\n"
           "220 2.0.0 Ready to start TLS\r\n",
           "NOOP\r\n", ST_STARTTLS, 0);
    const struct step early[] = {
        { true, "MAIL FROM:<a@b>\r\n" }, { false, "220 mx\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_REQUIRED, early, N(early),
           "220 mx\r\n530 5.7.0 Must issue a STARTTLS command first\r\n", "", ST_MORE, 0);
    const struct step pop3[] = {
        { false, "+OK ready\r\n" }, { true, "CAPA\r\nUSER alice\r\n" },
        { false, "+OK\r\nTOP\r\n.\r\n" },
    };
    expect(CONF_PROTO_POP3, ST_REQUIRED, pop3, N(pop3),
           "+OK ready\r\n+OK\r\nTOP\r\nSTLS\r\n.\r\n-ERR [AUTH] TLS is required: use STLS first\r\n",
           "CAPA\r\n", ST_MORE, 0);
    /* Optional: a refused STARTTLS with arguments, then the client goes blind: the refusal
     * still comes between the two responses. */
    const struct step blind[] = {
        { false, "220 mx\r\n" }, { true, "NOOP\r\nSTARTTLS x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" },
        { false, "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n" },
    };
    expect(CONF_PROTO_SMTP, ST_OPTIONAL, blind, N(blind),
           "220 mx\r\n250 2.0.0 Ok\r\n501 5.5.4 Syntax error (no parameters allowed)\r\n"
           "250 2.1.0 Ok\r\n",
           "NOOP\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", ST_BLIND, 0);
    const struct step imap[] = {
        { true, "a NOOP\r\nb STARTTLS\r\n" }, { false, "a OK done\r\n" },
    };
    expect(CONF_PROTO_IMAP, ST_AFTER_STARTTLS, imap, N(imap),
           "a OK done\r\nb BAD TLS is already active\r\n", "a NOOP\r\n", ST_MORE, 0);
}

/* IMAP tags as long as the line limit allows (item 15). */
static void long_tags(void)
{
    static char tag[300], cmd[400], want[400], refuse[400], want_refuse[400];
    memset(tag, 't', sizeof tag - 1);
    snprintf(cmd, sizeof cmd, "%s STARTTLS\r\n", tag);
    snprintf(want, sizeof want, "* OK ready\r\n%s OK Begin TLS negotiation now\r\n", tag);
    const struct step st[] = { { false, "* OK ready\r\n" }, { true, cmd } };
    expect(CONF_PROTO_IMAP, ST_REQUIRED, st, N(st), want, "", ST_STARTTLS, 0);
    expect(CONF_PROTO_IMAP, ST_OPTIONAL, st, N(st), want, "", ST_STARTTLS, 0);
    snprintf(refuse, sizeof refuse, "%s LOGIN a b\r\n", tag);
    snprintf(want_refuse, sizeof want_refuse,
             "* OK ready\r\n%s NO [PRIVACYREQUIRED] TLS is required: use STARTTLS first\r\n", tag);
    const struct step login[] = { { false, "* OK ready\r\n" }, { true, refuse } };
    expect(CONF_PROTO_IMAP, ST_REQUIRED, login, N(login), want_refuse, "", ST_MORE, 0);

    /* A tag just under the line limit, whole. */
    static char big[ST_LINE_MAX], big_want[ST_LINE_MAX + 64];
    size_t tl = ST_LINE_MAX - sizeof " STARTTLS\r\n";
    memset(big, 'T', tl);
    memcpy(big + tl, " STARTTLS\r\n", sizeof " STARTTLS\r\n");
    snprintf(big_want, sizeof big_want, "* OK ready\r\n%.*s OK Begin TLS negotiation now\r\n",
             (int)tl, big);
    const struct step huge[] = { { false, "* OK ready\r\n" }, { true, big } };
    static struct out o;
    size_t left = 0;
    CHECK(run(CONF_PROTO_IMAP, ST_REQUIRED, huge, N(huge), 0, &o, &left) == ST_STARTTLS);
    CHECK_STR(o.client, big_want);
}

/* The after-TLS EHLO filter edits lines of any length (item 16). */
static void long_ehlo_lines(void)
{
    static char resp[2048], want[2048];
    char word[1001];
    memset(word, 'X', sizeof word - 1);
    word[sizeof word - 1] = 0;
    snprintf(resp, sizeof resp, "250-mx\r\n250-%s\r\n250 STARTTLS\r\n", word);
    snprintf(want, sizeof want, "250-mx\r\n250 %s\r\n", word);
    const struct step smtp[] = { { true, "EHLO c\r\n" }, { false, resp } };
    expect(CONF_PROTO_SMTP, ST_AFTER_STARTTLS, smtp, N(smtp), want, "EHLO c\r\n", ST_MORE, 0);
}

/* The client's own QUIT / LOGOUT is noted: the backend closing after it is the normal end. */
static void quit_noted(void)
{
    static const struct {
        enum conf_proto proto;
        const char *greeting, *cmd;
    } cases[] = {
        { CONF_PROTO_IMAP, "* OK ready\r\n", "a LOGOUT\r\n" },
        { CONF_PROTO_POP3, "+OK ready\r\n", "QUIT\r\n" },
        { CONF_PROTO_SMTP, "220 mx\r\n", "QUIT\r\n" },
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct st_session *s = st_new(cases[i].proto, ST_REQUIRED);
        static struct out o;
        memset(&o, 0, sizeof o);
        struct st_sink sink = { &o, to_client, to_backend };
        size_t used;
        st_backend_input(s, cases[i].greeting, strlen(cases[i].greeting), &used, &sink);
        CHECK(!st_client_quit(s));
        st_client_input(s, cases[i].cmd, strlen(cases[i].cmd), &used, &sink);
        CHECK(st_client_quit(s));
        CHECK_STR(o.backend, cases[i].cmd);
        st_free(s);
    }
}

static void greeting(void)
{
    const char *smtp_multi = "220-a\r\n220 b\r\nrest";
    for (size_t cut = 0; cut < strlen(smtp_multi); cut++) {
        long n = st_greeting_length(CONF_PROTO_SMTP, smtp_multi, cut);
        CHECK(cut < 14 ? n == 0 : n == 14);
    }
    CHECK(st_greeting_length(CONF_PROTO_SMTP, "220-a\r\n220 b\r\n", 14) == 14);
    CHECK(st_greeting_length(CONF_PROTO_SMTP, "421 busy\r\n", 10) == -1);
    CHECK(st_greeting_length(CONF_PROTO_IMAP, "* OK hi\r\n", 9) == 9);
    CHECK(st_greeting_length(CONF_PROTO_IMAP, "* BYE no\r\n", 10) == -1);
    CHECK(st_greeting_length(CONF_PROTO_POP3, "+OK hi\r\n", 8) == 8);
    CHECK(st_greeting_length(CONF_PROTO_POP3, "-ERR no\r\n", 9) == -1);
    CHECK(strncmp(st_unavailable_reply(CONF_PROTO_IMAP), "* BYE [UNAVAILABLE]", 19) == 0);
    CHECK(strncmp(st_unavailable_reply(CONF_PROTO_POP3), "-ERR [SYS/TEMP]", 15) == 0);
    CHECK(strncmp(st_unavailable_reply(CONF_PROTO_SMTP), "421 4.3.0", 9) == 0);
    CHECK(strncmp(st_unavailable_reply(CONF_PROTO_HTTP), "HTTP/1.1 502", 12) == 0);
}

int main(void)
{
    imap();
    pop3();
    smtp();
    after_starttls();
    login_hidden();
    implicit();
    refusals_in_order();
    long_tags();
    long_ehlo_lines();
    quit_noted();
    greeting();
    return check_report("test_starttls");
}
