// Command loadgen sends kube-apiserver's request shapes to an etcd v3 server through etcd's own
// client and prints what it measured as one JSON object on stdout. bench/run.py builds and runs it.
//
// Keys are /registry/bench/ns-<n>/obj-<i>, values 1 KiB. Workloads:
//
//	preload       put -keys keys from index -first on, key i in namespace i % -namespaces
//	creates       -clients clients create fresh keys in the window (txn: mod_revision == 0 ? put : get)
//	updates       -clients clients cycle over -keys-per-client keys each (get, then txn:
//	              mod_revision == read one ? put : get); preload them with -namespaces = -clients
//	lists         -clients listers list the -keys preloaded keys back to back in the window
//	list-latency  -count full lists one after another, each one's duration
//	watch         one prefix watch while puts go out at -rate per second for -duration;
//	              each put's delay from just before its Put call to its event
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/pkg/logutil"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
)

const (
	keyPrefix    = "/registry/bench/"
	pageSize     = 500              // kube-apiserver's default page size for paginated lists
	preloadBatch = 100              // puts per preload txn: under etcd's default limit of 128 ops per txn
	rpcTimeout   = 60 * time.Second // only there so a stuck server fails the run instead of hanging it
)

var value = strings.Repeat("v", 1024)

// result is the JSON printed on stdout.
type result struct {
	OperationsPerSecond float64   `json:"operations_per_second"`
	Seconds             []float64 `json:"seconds,omitempty"` // each full list's duration, or each event's delay
	CPUSeconds          float64   `json:"cpu_seconds"`       // this process's user + system CPU while measuring
}

type operation func(ctx context.Context) error

func objectKey(namespace, index int) string {
	return fmt.Sprintf("%sns-%d/obj-%d", keyPrefix, namespace, index)
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		panic(err)
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// guardedPut is kube-apiserver's write: put if the key's mod revision is still modRevision
// (0: absent), else get it. It fails if the put did not happen: every key has a single writer.
func guardedPut(ctx context.Context, kv clientv3.KV, key string, modRevision int64) error {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	response, err := kv.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRevision)).
		Then(clientv3.OpPut(key, value)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err == nil && !response.Succeeded {
		err = fmt.Errorf("%s is not at mod revision %d although only this client writes it", key, modRevision)
	}
	return err
}

func creator(kv clientv3.KV, client int) operation {
	created := 0
	return func(ctx context.Context) error {
		key := objectKey(client, created)
		created++
		return guardedPut(ctx, kv, key, 0)
	}
}

// updater does kube-apiserver's GuaranteedUpdate over the keys of namespace client, as preload with
// -namespaces = clients puts them.
func updater(kv clientv3.KV, client, clients, keys int) operation {
	next := 0
	return func(ctx context.Context) error {
		key := objectKey(client, client+clients*next)
		next = (next + 1) % keys
		getCtx, cancel := context.WithTimeout(ctx, rpcTimeout)
		current, err := kv.Get(getCtx, key)
		cancel()
		if err != nil {
			return err
		}
		if len(current.Kvs) == 0 {
			return fmt.Errorf("%s was not preloaded", key)
		}
		return guardedPut(ctx, kv, key, current.Kvs[0].ModRevision)
	}
}

// listAll lists the prefix as kube-apiserver paginates: the first page at the current revision,
// every next one at that same revision from just after the previous page's last key.
func listAll(ctx context.Context, kv clientv3.KV, expected int) error {
	key, end, revision, listed := keyPrefix, clientv3.GetPrefixRangeEnd(keyPrefix), int64(0), 0
	for {
		pageCtx, cancel := context.WithTimeout(ctx, rpcTimeout)
		page, err := kv.Get(pageCtx, key, clientv3.WithRange(end), clientv3.WithLimit(pageSize), clientv3.WithRev(revision))
		cancel()
		if err != nil {
			return err
		}
		listed += len(page.Kvs)
		if !page.More {
			break
		}
		if revision == 0 {
			revision = page.Header.Revision
		}
		key = string(page.Kvs[len(page.Kvs)-1].Key) + "\x00"
	}
	if listed != expected {
		return fmt.Errorf("a full list returned %d keys, expected %d", listed, expected)
	}
	return nil
}

// closedLoop runs each operation back to back from start until the window closes. A client's rate
// is what it completed inside the window over the time until its last completion, so slow
// operations (a full list) are not rounded to whole counts per window.
func closedLoop(ctx context.Context, start time.Time, duration time.Duration, operations []operation) (result, error) {
	if time.Now().After(start) {
		return result{}, errors.New("-start-at is past: the window opened before the generator had connected")
	}
	end := start.Add(duration)
	time.Sleep(time.Until(start))
	cpuAtStart := cpuSeconds()
	cpuAtEnd := make(chan float64, 1)
	time.AfterFunc(time.Until(end), func() { cpuAtEnd <- cpuSeconds() })
	rates := make([]float64, len(operations))
	group, ctx := errgroup.WithContext(ctx)
	for client, do := range operations {
		client, do := client, do
		group.Go(func() error {
			completed, lastCompletedAt := 0, start
			for {
				if err := do(ctx); err != nil {
					return err
				}
				now := time.Now()
				if now.After(end) {
					if completed > 0 {
						rates[client] = float64(completed) / lastCompletedAt.Sub(start).Seconds()
					}
					return nil
				}
				completed, lastCompletedAt = completed+1, now
			}
		})
	}
	if err := group.Wait(); err != nil {
		return result{}, err
	}
	total := 0.0
	for _, rate := range rates {
		total += rate
	}
	return result{OperationsPerSecond: total, CPUSeconds: <-cpuAtEnd - cpuAtStart}, nil
}

// preload puts value under keys [first, first+count), a batch of one namespace's keys per txn (a
// topology may route namespaces to different databases), concurrency txns at a time.
func preload(ctx context.Context, kv clientv3.KV, first, count, namespaces, concurrency int) (result, error) {
	started, cpuAtStart := time.Now(), cpuSeconds()
	batches := make(chan []clientv3.Op)
	group, ctx := errgroup.WithContext(ctx)
	group.Go(func() error {
		defer close(batches)
		send := func(batch []clientv3.Op) error {
			select {
			case batches <- batch:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		for namespace := 0; namespace < namespaces; namespace++ {
			var batch []clientv3.Op
			// the first index from first on that falls in this namespace
			for index := first + ((namespace-first)%namespaces+namespaces)%namespaces; index < first+count; index += namespaces {
				if batch = append(batch, clientv3.OpPut(objectKey(namespace, index), value)); len(batch) == preloadBatch {
					if err := send(batch); err != nil {
						return err
					}
					batch = nil
				}
			}
			if len(batch) > 0 {
				if err := send(batch); err != nil {
					return err
				}
			}
		}
		return nil
	})
	for worker := 0; worker < concurrency; worker++ {
		group.Go(func() error {
			for batch := range batches {
				txnCtx, cancel := context.WithTimeout(ctx, rpcTimeout)
				_, err := kv.Txn(txnCtx).Then(batch...).Commit()
				cancel()
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := group.Wait()
	return result{OperationsPerSecond: float64(count) / time.Since(started).Seconds(), CPUSeconds: cpuSeconds() - cpuAtStart}, err
}

func listLatency(ctx context.Context, kv clientv3.KV, expected, count int) (result, error) {
	cpuAtStart := cpuSeconds()
	durations := make([]float64, count)
	for index := range durations {
		started := time.Now()
		if err := listAll(ctx, kv, expected); err != nil {
			return result{}, err
		}
		durations[index] = time.Since(started).Seconds()
	}
	return result{Seconds: durations, CPUSeconds: cpuSeconds() - cpuAtStart}, nil
}

// watchDelays puts on a fixed schedule, each put from its own goroutine so a slow one never delays
// the next, while one watch on the prefix (with previous values, as kube-apiserver asks) times them.
func watchDelays(ctx context.Context, client *clientv3.Client, rate float64, duration time.Duration) (result, error) {
	cpuAtStart := cpuSeconds()
	total := int(math.Round(rate * duration.Seconds()))
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	events := client.Watch(watchCtx, keyPrefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	if created := <-events; !created.Created {
		return result{}, fmt.Errorf("the watch was not created: %v", created.Err())
	}
	var mutex sync.Mutex
	sentAt := make(map[string]time.Time, total)
	delays := make([]float64, 0, total)
	received := make(chan error, 1)
	go func() {
		for response := range events {
			if err := response.Err(); err != nil {
				received <- err
				return
			}
			receivedAt := time.Now()
			mutex.Lock()
			for _, event := range response.Events {
				delays = append(delays, receivedAt.Sub(sentAt[string(event.Kv.Key)]).Seconds())
			}
			done := len(delays) >= total
			mutex.Unlock()
			if done {
				received <- nil
				return
			}
		}
		received <- errors.New("the server ended the watch stream")
	}()
	var puts errgroup.Group
	nextPutAt := time.Now()
	for index := 0; index < total; index++ {
		time.Sleep(time.Until(nextPutAt))
		key := objectKey(0, index)
		mutex.Lock()
		sentAt[key] = time.Now()
		mutex.Unlock()
		puts.Go(func() error {
			putCtx, cancel := context.WithTimeout(ctx, rpcTimeout)
			defer cancel()
			_, err := client.Put(putCtx, key, value)
			return err
		})
		nextPutAt = nextPutAt.Add(time.Duration(float64(time.Second) / rate))
	}
	if err := puts.Wait(); err != nil {
		return result{}, err
	}
	select {
	case err := <-received:
		return result{Seconds: delays, CPUSeconds: cpuSeconds() - cpuAtStart}, err
	case <-time.After(rpcTimeout):
		mutex.Lock()
		defer mutex.Unlock()
		return result{}, fmt.Errorf("only %d of %d events arrived", len(delays), total)
	}
}

func run() (result, error) {
	endpoint := flag.String("endpoint", "127.0.0.1:2379", "the server's host:port")
	workload := flag.String("workload", "", "preload, creates, updates, lists, list-latency or watch")
	clients := flag.Int("clients", 64, "concurrent clients (preload: concurrent txns)")
	keys := flag.Int("keys", 0, "preload: keys to put; lists, list-latency: keys a full list returns")
	first := flag.Int("first", 0, "preload: index of the first key")
	namespaces := flag.Int("namespaces", 100, "preload: namespaces the keys are spread over")
	keysPerClient := flag.Int("keys-per-client", 16, "updates: keys each client cycles over")
	startAt := flag.Float64("start-at", 0, "creates, updates, lists: when the window opens, in Unix seconds (0: once connected)")
	duration := flag.Duration("duration", 10*time.Second, "creates, updates, lists: window; watch: how long puts go out")
	count := flag.Int("count", 5, "list-latency: full lists to time")
	rate := flag.Float64("rate", 200, "watch: puts per second")
	flag.Parse()

	ctx := context.Background()
	window := func(newOperation func(index int) operation) (result, error) {
		operations := make([]operation, *clients)
		for index := range operations {
			operations[index] = newOperation(index)
		}
		start := time.Now().Add(time.Millisecond)
		if *startAt != 0 {
			start = time.Unix(0, int64(*startAt*float64(time.Second)))
		}
		return closedLoop(ctx, start, *duration, operations)
	}
	workloads := map[string]func(client *clientv3.Client) (result, error){
		"preload": func(client *clientv3.Client) (result, error) {
			return preload(ctx, client, *first, *keys, *namespaces, *clients)
		},
		"creates": func(client *clientv3.Client) (result, error) {
			return window(func(index int) operation { return creator(client, index) })
		},
		"updates": func(client *clientv3.Client) (result, error) {
			return window(func(index int) operation { return updater(client, index, *clients, *keysPerClient) })
		},
		"lists": func(client *clientv3.Client) (result, error) {
			return window(func(int) operation {
				return func(ctx context.Context) error { return listAll(ctx, client, *keys) }
			})
		},
		"list-latency": func(client *clientv3.Client) (result, error) {
			return listLatency(ctx, client, *keys, *count)
		},
		"watch": func(client *clientv3.Client) (result, error) {
			return watchDelays(ctx, client, *rate, *duration)
		},
	}
	measure, known := workloads[*workload]
	if !known {
		return result{}, fmt.Errorf("unknown -workload %q", *workload)
	}

	logConfig := logutil.DefaultZapLoggerConfig
	logConfig.Level = zap.NewAtomicLevelAt(zap.ErrorLevel) // not a warning per call cancelled after a failure
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{*endpoint},
		DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithBlock()}, // as kube-apiserver dials: fail if the server is not there
		LogConfig:   &logConfig,
	})
	if err != nil {
		return result{}, fmt.Errorf("connecting to %s: %w", *endpoint, err)
	}
	defer client.Close()
	return measure(client)
}

func main() {
	// A full list of 20,000 keys allocates over 20 MB: collecting garbage less often than by default
	// halves the generator's CPU per list, at a few hundred MB of heap at most.
	debug.SetGCPercent(400)
	measured, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(measured); err != nil {
		panic(err)
	}
}
