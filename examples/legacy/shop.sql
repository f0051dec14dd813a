-- The example legacy master's database. Loaded into an existing database (no CREATE
-- DATABASE / USE), e.g. `mysql shop < shop.sql`.
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS products;

CREATE TABLE products (
  id INT PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  price_cents INT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE orders (
  id INT PRIMARY KEY AUTO_INCREMENT,
  product_id INT NOT NULL,
  quantity INT NOT NULL,
  customer VARCHAR(100) NOT NULL,
  placed_at DATETIME NOT NULL,
  FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT INTO products (id, name, price_cents) VALUES
  (1, 'Red mug', 1200),
  (2, 'Blue teapot', 3400),
  (3, 'Green spoon', 450);

INSERT INTO orders (product_id, quantity, customer, placed_at) VALUES
  (1, 2, 'Ada', '2024-03-01 10:15:00'),
  (2, 1, 'Grace', '2024-03-02 16:40:00'),
  (3, 6, 'Linus', '2024-03-03 09:05:00'),
  (1, 1, 'Zoë', '2024-03-04 12:30:00');
