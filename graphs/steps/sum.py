"""Aqueduct's SumHandler as a Plumber step: a "model" loaded once per copy in
on_start, then one number in, one result out."""
import plumber_step


class MyModel:
    """Aqueduct's example model: the sum of i * i for i below n."""

    def process(self, n):
        return sum(i * i for i in range(n))


model = None


def on_start():
    global model
    model = MyModel()


@plumber_step.step
def handle(value):
    return {"n": value, "sum": model.process(value)}
