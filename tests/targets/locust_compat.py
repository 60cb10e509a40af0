"""A locustfile that uses what Locust users use: a LoadTestShape, an init hook with its own
command-line argument, every lifecycle event (quit too), and tagged tasks. Run by
tests/test_locust.py under both `locust --headless` and `perfkit load`.

Each event appends one line to the file named by `--events-file`, so a test can compare the
order in which the two tools fire them, and `--greeting` shows that the locustfile's own
argument reached `environment.parsed_options`.
"""

from locust import HttpUser, LoadTestShape, constant, events, tag, task

EVENTS_FILE = []  # events.quit has no environment: the init hook keeps the path for it


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--events-file", default="", help="Where the hooks write their lines")
    parser.add_argument("--greeting", default="none", help="Said by the init hook")


def note(environment, line):
    path = environment.parsed_options.events_file
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(line + "\n")


@events.init.add_listener
def on_init(environment, **_):
    EVENTS_FILE.append(environment.parsed_options.events_file)
    note(environment, f"init greeting={environment.parsed_options.greeting}")


@events.test_start.add_listener
def on_test_start(environment, **_):
    note(environment, "test_start")


@events.test_stop.add_listener
def on_test_stop(environment, **_):
    note(environment, "test_stop")


@events.quitting.add_listener
def on_quitting(environment, **_):
    note(environment, "quitting")


@events.quit.add_listener
def on_quit(exit_code, **_):
    if EVENTS_FILE and EVENTS_FILE[0]:
        with open(EVENTS_FILE[0], "a", encoding="utf-8") as file:
            file.write(f"quit {exit_code}\n")


class Shopper(HttpUser):
    wait_time = constant(0.2)

    @tag("browse")
    @task(3)
    def browse(self):
        self.client.get("/items", name="/items")

    @tag("buy")
    @task
    def buy(self):
        self.client.post("/cart", name="/cart")

    @task
    def untagged(self):
        self.client.get("/about", name="/about")


class Steps(LoadTestShape):
    """2 users for 3 s, 4 users for 3 s, then the shape ends the run."""

    stages = ((3, 2), (6, 4))

    def tick(self):
        run_time = self.get_run_time()
        for end_s, users in self.stages:
            if run_time < end_s:
                return users, 10
        return None
