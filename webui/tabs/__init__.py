"""One module per tab of the page: build(ui, ...) makes its components, wire(ui, ...) its handlers."""
