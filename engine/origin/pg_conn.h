/* pg_conn.h - one libpq connection on an event loop: conninfo, connect with a deadline, flush. */
#ifndef SLUICE_PG_CONN_H
#define SLUICE_PG_CONN_H

#include <stddef.h>
#include <sys/time.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <libpq-fe.h>

/* What an owner adds to every conninfo; a setting the conninfo makes itself wins. */
struct pg_conn_options {
    const char *fallback_application_name; /* NULL: none */
    const char *server_options; /* appended to the conninfo's "options" (else PGOPTIONS), e.g.
                                   "-c statement_timeout=5000"; NULL: none */
    int keepalives; /* TCP keepalives: idle 10 s, every 5 s, 3 probes (a dead peer in ~25 s) */
};

/* A conninfo made ready to connect. */
struct pg_conn_params {
    char **keywords, **values; /* libpq connection parameters, NULL-terminated */
    struct timeval connect_tv; /* how long one connect attempt may take */
};

/*
 * Reads `conninfo` (key=value pairs or a postgresql:// URI; NULL or "": the
 * PG* environment alone) the one way every connection of the engine does:
 * each setting it makes is passed to libpq as it is (no "dbname" expansion),
 * what it leaves out comes from the PG* environment, and `o` (may be NULL)
 * adds its defaults. The connect deadline is the conninfo's connect_timeout,
 * else PGCONNECT_TIMEOUT, else 2 s; libpq does not apply it while polling,
 * pg_conn does. Returns new params, or NULL with "bad conninfo: ..." in err.
 */
struct pg_conn_params *pg_conn_params_new(const char *conninfo, const struct pg_conn_options *o,
                                          char *err, size_t errlen);

/* Frees params; NULL is a no-op. */
void pg_conn_params_free(struct pg_conn_params *params);

/*
 * What a connection tells its owner, always from the event loop. A handler
 * may close the connection and free the memory that holds it; pg_conn does
 * not touch it after a handler returns.
 */
struct pg_conn_handler {
    /* Connected: the socket is non-blocking and watched for reading. */
    void (*up)(void *arg);
    /*
     * The connect attempt failed or passed its deadline; msg (borrowed) says
     * why. The owner closes the connection (pg_conn_close).
     */
    void (*failed)(void *arg, const char *msg);
    /* Once up: the socket is readable (EV_READ) or, while output waits, writable (EV_WRITE). */
    void (*io)(void *arg, short what);
};

/* One connection, embedded in its owner's memory. */
struct pg_conn {
    PGconn *pg;  /* NULL while closed; the owner sends and reads on it once up */
    int writing; /* output waits for the socket to become writable */
    /* private */
    struct event_base *base;
    const struct pg_conn_params *params;
    const struct pg_conn_handler *h;
    void *arg;
    evutil_socket_t fd; /* rd and wr are assigned to it when >= 0 */
    struct event rd, wr, deadline;
    int connecting;
};

/*
 * Prepares a closed connection on `base` (the loop of the thread that will
 * use it). params, h and arg are borrowed and must outlive the connection.
 */
void pg_conn_init(struct pg_conn *c, struct event_base *base, const struct pg_conn_params *params,
                  const struct pg_conn_handler *h, void *arg);

/*
 * Starts a non-blocking connect on a closed connection; h->up or h->failed
 * follows from the loop, failed at the latest when params->connect_tv has
 * passed. Returns 0, or -1 with a message in err when the attempt failed at
 * once (the owner closes the connection then too).
 */
int pg_conn_start(struct pg_conn *c, char *err, size_t errlen);

/*
 * Sends what libpq holds of the output; while some remains, the socket is
 * watched for writing (h->io with EV_WRITE). Call after every PQsend*.
 * Returns 0, or -1 when the connection broke (PQerrorMessage(c->pg) says why;
 * the owner closes it).
 */
int pg_conn_flush(struct pg_conn *c);

/* Closes the connection, if open, and stops its events. May be called again. */
void pg_conn_close(struct pg_conn *c);

/* The first line of a libpq message without its "ERROR:  " style prefix (new string). */
char *pg_conn_first_line(const char *msg);

#endif
