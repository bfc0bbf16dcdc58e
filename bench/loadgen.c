/*
 * loadgen: a small libcurl-multi load generator for the capture benchmark.
 *
 * It keeps N transfers in flight through an HTTP proxy (CONNECT for https://
 * URLs), verifies the certificate the proxy presents, throws response bodies
 * away after counting them, and prints one JSON line at the end:
 *
 *   {"requests":..,"errors":..,"seconds":..,"rps":..,"p50_ms":..,"p99_ms":..,
 *    "bytes":..,"mb_per_s":..,"connects":..,"cpu_s":..}
 *
 * requests: completed transfers; errors: those of them that failed (a curl
 * error or a status outside 2xx); rps counts the successful ones; latency is
 * libcurl's total time of successful transfers; bytes are body bytes received
 * plus uploaded; MB is 10^6 bytes; connects: new connections libcurl opened
 * (equal to the number of transfers when nothing is reused); cpu_s: this
 * process's user+system CPU seconds.
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c -lcurl
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define MAX_CONNECTIONS 10000
#define UPLOAD_CHUNK 65536

struct options {
    const char *url;
    const char *proxy;
    const char *cacert;
    long connections;
    double duration;      /* seconds; 0 = unlimited */
    long long requests;   /* 0 = unlimited */
    int new_connection;
    long long upload_bytes; /* -1 = GET */
    int http11;
    int http2;            /* every transfer multiplexed as an h2 stream on one connection */
    long timeout;         /* seconds per transfer */
    int verbose;
};

struct slot {
    CURL *easy;
    long long upload_left;
    char error[CURL_ERROR_SIZE];
};

static struct options opt = {
    .url = NULL, .proxy = NULL, .cacert = NULL, .connections = 1,
    .duration = 0, .requests = 0, .new_connection = 0, .upload_bytes = -1,
    .http11 = 0, .http2 = 0, .timeout = 300, .verbose = 0,
};

static char upload_pattern[UPLOAD_CHUNK];
static unsigned long long body_bytes;
static double *latencies;
static size_t latency_count, latency_cap;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t sink(char *data, size_t size, size_t nmemb, void *userdata)
{
    (void)data;
    (void)userdata;
    body_bytes += size * nmemb;
    return size * nmemb;
}

static size_t source(char *buffer, size_t size, size_t nitems, void *userdata)
{
    struct slot *slot = userdata;
    size_t room = size * nitems;
    size_t n = room < UPLOAD_CHUNK ? room : UPLOAD_CHUNK;
    if ((long long)n > slot->upload_left)
        n = (size_t)slot->upload_left;
    memcpy(buffer, upload_pattern, n);
    slot->upload_left -= n;
    return n;
}

static int seek_source(void *userdata, curl_off_t offset, int origin)
{
    struct slot *slot = userdata;
    if (origin != SEEK_SET || offset < 0 || offset > opt.upload_bytes)
        return CURL_SEEKFUNC_CANTSEEK;
    slot->upload_left = opt.upload_bytes - offset;
    return CURL_SEEKFUNC_OK;
}

static void record_latency(double ms)
{
    if (latency_count == latency_cap) {
        latency_cap = latency_cap ? latency_cap * 2 : 65536;
        latencies = realloc(latencies, latency_cap * sizeof *latencies);
        if (!latencies) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(2);
        }
    }
    latencies[latency_count++] = ms;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double p)
{
    if (!latency_count)
        return 0;
    size_t rank = (size_t)(p / 100.0 * latency_count + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > latency_count)
        rank = latency_count;
    return latencies[rank - 1];
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loadgen --url URL [--proxy http://HOST:PORT] [--cacert PEM]\n"
            "               [--connections N] (--duration SECONDS | --requests N)\n"
            "               [--new-connection] [--upload-bytes N] [--http1.1 | --http2]\n"
            "               [--timeout SECONDS] [--verbose] [--version]\n");
}

static void parse(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"url", required_argument, 0, 'u'},
        {"proxy", required_argument, 0, 'x'},
        {"cacert", required_argument, 0, 'c'},
        {"connections", required_argument, 0, 'n'},
        {"duration", required_argument, 0, 'd'},
        {"requests", required_argument, 0, 'r'},
        {"new-connection", no_argument, 0, 'N'},
        {"upload-bytes", required_argument, 0, 'U'},
        {"http1.1", no_argument, 0, '1'},
        {"http2", no_argument, 0, '2'},
        {"timeout", required_argument, 0, 't'},
        {"verbose", no_argument, 0, 'v'},
        {"version", no_argument, 0, 'V'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        errno = 0;
        switch (c) {
        case 'u': opt.url = optarg; continue;
        case 'x': opt.proxy = optarg; continue;
        case 'c': opt.cacert = optarg; continue;
        case 'n': opt.connections = strtol(optarg, &end, 10); break;
        case 'd': opt.duration = strtod(optarg, &end); break;
        case 'r': opt.requests = strtoll(optarg, &end, 10); break;
        case 'N': opt.new_connection = 1; continue;
        case 'U': opt.upload_bytes = strtoll(optarg, &end, 10); break;
        case '1': opt.http11 = 1; continue;
        case '2': opt.http2 = 1; continue;
        case 't': opt.timeout = strtol(optarg, &end, 10); break;
        case 'v': opt.verbose = 1; continue;
        case 'V': printf("loadgen (%s)\n", curl_version()); exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
        if (errno || *end || end == optarg) {
            fprintf(stderr, "loadgen: bad number %s\n", optarg);
            exit(2);
        }
    }
    if (!opt.url || optind != argc) {
        usage(stderr);
        exit(2);
    }
    if (opt.connections < 1 || opt.connections > MAX_CONNECTIONS) {
        fprintf(stderr, "loadgen: --connections must be 1..%d\n", MAX_CONNECTIONS);
        exit(2);
    }
    if (opt.duration <= 0 && opt.requests <= 0) {
        fprintf(stderr, "loadgen: give --duration or --requests\n");
        exit(2);
    }
    if (opt.duration < 0 || opt.requests < 0 || opt.timeout < 1 || opt.upload_bytes < -1) {
        fprintf(stderr, "loadgen: negative or zero limit\n");
        exit(2);
    }
}

static void setup(struct slot *slot, struct curl_slist *headers)
{
    CURL *e = curl_easy_init();
    if (!e) {
        fprintf(stderr, "loadgen: curl_easy_init failed\n");
        exit(2);
    }
    slot->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, opt.url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, slot);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, slot->error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, opt.timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    /* Ignore *_proxy variables: the proxy is exactly what we were given. */
    curl_easy_setopt(e, CURLOPT_PROXY, opt.proxy ? opt.proxy : "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    if (opt.cacert)
        curl_easy_setopt(e, CURLOPT_CAINFO, opt.cacert);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (opt.http11)
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (opt.http2) {
        /* h2 over TLS, and wait for the one connection rather than open another. */
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    }
    if (opt.new_connection) {
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    if (opt.upload_bytes >= 0) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)opt.upload_bytes);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, source);
        curl_easy_setopt(e, CURLOPT_READDATA, slot);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, seek_source);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, slot);
    }
    if (opt.verbose)
        curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
}

int main(int argc, char **argv)
{
    parse(argc, argv);
    for (size_t i = 0; i < sizeof upload_pattern; i++)
        upload_pattern[i] = "0123456789abcdef"[i % 16];

    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        fprintf(stderr, "loadgen: curl_global_init failed\n");
        return 2;
    }
    CURLM *multi = curl_multi_init();
    /* One cached connection per transfer, so keep-alive really reuses them. */
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, opt.http2 ? 1L : opt.connections);
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, opt.http2 ? 1L : opt.connections);
    /* --http2: the --connections transfers are streams multiplexed on one connection. */
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, opt.http2 ? (long)CURLPIPE_MULTIPLEX : (long)CURLPIPE_NOTHING);

    struct curl_slist *headers = NULL;
    /* No "Expect: 100-continue" wait on uploads; a binary body type. */
    headers = curl_slist_append(headers, "Expect:");
    if (opt.upload_bytes >= 0)
        headers = curl_slist_append(headers, "Content-Type: application/octet-stream");

    struct slot *slots = calloc(opt.connections, sizeof *slots);
    if (!slots) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 2;
    }

    long long started = 0, completed = 0, errors = 0, connects = 0;
    int reported = 0;
    double start = now_seconds(), last = start;
    double deadline = opt.duration > 0 ? start + opt.duration : 0;
    /* Hard stop: whatever is still running a whole timeout after the end is abandoned. */
    double hard_stop = deadline ? deadline + opt.timeout + 5 : 0;

    for (long i = 0; i < opt.connections; i++) {
        if (opt.requests && started >= opt.requests)
            break;
        setup(&slots[i], headers);
        slots[i].upload_left = opt.upload_bytes;
        curl_multi_add_handle(multi, slots[i].easy);
        started++;
    }

    int running = 1;
    while (running) {
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc != CURLM_OK) {
            fprintf(stderr, "loadgen: curl_multi_perform: %s\n", curl_multi_strerror(mc));
            break;
        }
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *e = msg->easy_handle;
            struct slot *slot;
            long status = 0, conns = 0;
            curl_off_t total_us = 0;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&slot);
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
            curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total_us);
            curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &conns);
            connects += conns;
            completed++;
            last = now_seconds();
            if (msg->data.result != CURLE_OK || status < 200 || status > 299) {
                errors++;
                if (!reported) {
                    reported = 1;
                    if (msg->data.result != CURLE_OK)
                        fprintf(stderr, "loadgen: first error: %s (%s)\n",
                                slot->error[0] ? slot->error : curl_easy_strerror(msg->data.result),
                                curl_easy_strerror(msg->data.result));
                    else
                        fprintf(stderr, "loadgen: first error: HTTP status %ld\n", status);
                }
            } else {
                record_latency(total_us / 1000.0);
                if (opt.upload_bytes > 0)
                    body_bytes += (unsigned long long)opt.upload_bytes;
            }
            curl_multi_remove_handle(multi, e);
            int more = (!opt.requests || started < opt.requests) && (!deadline || last < deadline);
            if (more) {
                slot->upload_left = opt.upload_bytes;
                slot->error[0] = 0;
                curl_multi_add_handle(multi, e);
                started++;
                running = 1;
            }
        }
        if (hard_stop && now_seconds() > hard_stop) {
            fprintf(stderr, "loadgen: abandoning %lld unfinished transfers\n", started - completed);
            break;
        }
        if (running) {
            mc = curl_multi_poll(multi, NULL, 0, 100, NULL);
            if (mc != CURLM_OK) {
                fprintf(stderr, "loadgen: curl_multi_poll: %s\n", curl_multi_strerror(mc));
                break;
            }
        }
    }

    double seconds = last - start;
    if (seconds <= 0)
        seconds = 1e-9;
    qsort(latencies, latency_count, sizeof *latencies, compare_doubles);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    long long ok = completed - errors;
    printf("{\"requests\":%lld,\"errors\":%lld,\"seconds\":%.3f,\"rps\":%.1f,"
           "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"bytes\":%llu,\"mb_per_s\":%.2f,"
           "\"connects\":%lld,\"cpu_s\":%.3f}\n",
           completed, errors, seconds, ok / seconds, percentile(50), percentile(99),
           body_bytes, body_bytes / seconds / 1e6, connects, cpu);
    fflush(stdout);

    for (long i = 0; i < opt.connections; i++) {
        if (slots[i].easy) {
            curl_multi_remove_handle(multi, slots[i].easy);
            curl_easy_cleanup(slots[i].easy);
        }
    }
    curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
    curl_global_cleanup();
    free(slots);
    free(latencies);
    return errors || completed == 0 ? 1 : 0;
}
